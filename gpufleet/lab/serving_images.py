"""Images of the serving stack that the lab builds and publishes to its registry.

Each part of the stack has a module (gpufleet/lab/images_<part>.py) whose
``build(client, base_image) -> list[tuple[str, str]]`` returns (local tag, name in the lab registry)
pairs. `lab up` builds what is missing (cached by input digests) and publishes each pair as
``lab-registry:5000/<name>`` for the hosts to pull, as they would from Docker Hub or NGC.

The vLLM image is one lane and everything else the other: its cold build (~5.5 minutes on a 2-core
machine) and its push (~1 minute) are mostly waits on pip, the disk and one-core layer compression,
and Milvus, the app and the exporter build and push (~2.5 minutes together) beside it. Each image is
pushed as soon as it is built.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from gpufleet.lab import images_app, images_milvus, images_monitoring, images_vllm

# Lanes built side by side; the builders of a lane run in this order.
LANES = [[images_vllm.build], [images_milvus.build, images_app.build, images_monitoring.build]]


def build_all(new_client: Callable[[], object], base_image: str,
              publish: Callable[[object, str, str], None]) -> list[tuple[str, str]]:
    """Build every serving image and ``publish(client, local tag, registry name)`` each one once
    built; the (local tag, registry name) pairs, in ``LANES`` order. Each lane has a Docker client
    of its own (``new_client()``: docker-py's client is not made for two threads). A failed build
    or push in either lane fails the lab's start once the other lane has ended (a half-pushed image
    is pushed again next time)."""

    def lane(builders) -> list[tuple[str, str]]:
        client, published = new_client(), []
        for build in builders:
            for local_tag, name in build(client, base_image):
                publish(client, local_tag, name)
                published.append((local_tag, name))
        return published

    with ThreadPoolExecutor(max_workers=len(LANES)) as pool:
        results = [pool.submit(lane, builders) for builders in LANES]
        return [pair for result in results for pair in result.result()]
