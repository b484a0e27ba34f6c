"""Images of the serving stack that the lab builds and publishes to its registry.

Each part of the stack has a module (gpufleet/lab/images_<part>.py) whose
``build(client, base_image) -> list[tuple[str, str]]`` returns (local tag, name in the lab registry)
pairs. `lab up` builds what is missing (cached by input digests) and publishes each pair as
``lab-registry:5000/<name>`` for the hosts to pull, as they would from Docker Hub or NGC.
"""

from __future__ import annotations

from gpufleet.lab import images_app, images_milvus, images_monitoring, images_vllm

# Built and published in this order.
BUILDERS = [images_vllm.build, images_milvus.build, images_app.build, images_monitoring.build]


def build_all(client, base_image: str) -> list[tuple[str, str]]:
    published = []
    for build in BUILDERS:
        published += build(client, base_image)
    return published
