"""Images of the serving stack that the lab builds and publishes to its registry.

Each module listed in BUILDER_MODULES (gpufleet/lab/images_<part>.py) defines
``build(client, base_image) -> list[tuple[str, str]]``: (local tag, name in the lab registry)
pairs. `lab up` builds what is missing (cached by input digests) and publishes each pair as
``lab-registry:5000/<name>`` for the hosts to pull, as they would from Docker Hub or NGC.
"""

from __future__ import annotations

import importlib

BUILDER_MODULES = ["images_vllm", "images_milvus", "images_app", "images_monitoring"]


def build_all(client, base_image: str) -> list[tuple[str, str]]:
    published = []
    for module_name in BUILDER_MODULES:
        try:
            module = importlib.import_module(f"gpufleet.lab.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"gpufleet.lab.{module_name}":
                raise
            continue  # that part of the stack has no lab image (yet)
        published += module.build(client, base_image)
    return published
