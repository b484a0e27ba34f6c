"""Room on this machine's disk for what the lab's first deploy will pull into its nodes.

Every stand-in host runs its own Docker engine on a volume of this machine's engine, so each new
GPU node pulls its own copy of every serving image (vLLM, Milvus, the RAG app, the DCGM stand-in:
about 5.6 GB), then builds the NCCL-pinned vLLM image on top (a few hundred MB per NCCL version
the tests try). A machine without that room fails minutes later, half-deployed, with Docker's
"no space left on device" in the middle of a pull; `lab up` refuses at the start instead, naming
what it needs and what there is.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import docker

GIB = 1024 ** 3
# Per new GPU node, beyond the images it pulls: the NCCL-pinned vLLM builds (~0.35 GB each; the
# tests build two), the stand-in packages, logs and the layer downloads in flight.
PER_NODE_EXTRA_BYTES = 2 * GIB


class NotEnoughDisk(RuntimeError):
    """This machine's Docker data root cannot hold what the lab's nodes will pull."""


def pulled_bytes(client: docker.DockerClient, local_tags: list[str]) -> int:
    """What one GPU node holds after pulling these images (their unpacked sizes)."""
    return sum(client.images.get(tag).attrs["Size"] for tag in local_tags)


def need_for(new_gpu_nodes: int, per_node_pull: int) -> int:
    """Bytes the new GPU nodes will take.

    >>> need_for(2, 5 * GIB) // GIB
    14
    >>> need_for(0, 5 * GIB)
    0
    """
    return new_gpu_nodes * (per_node_pull + PER_NODE_EXTRA_BYTES)


def check_room(client: docker.DockerClient, new_gpu_nodes: int, local_tags: list[str]) -> None:
    """Raise :class:`NotEnoughDisk` when the engine's data root has less free space than the new
    GPU nodes will pull. Nodes that already exist keep their volumes (and their images): they
    need nothing more. An engine on another machine (its data root not here) is not checked."""
    if new_gpu_nodes == 0:
        return
    root = Path(client.info().get("DockerRootDir", "/var/lib/docker"))
    if not root.exists():
        return
    per_node = pulled_bytes(client, local_tags)
    need = need_for(new_gpu_nodes, per_node)
    free = shutil.disk_usage(root).free
    if free < need:
        raise NotEnoughDisk(
            f"{free / GIB:.1f} GiB free under {root}, and the first deploy needs about {need / GIB:.1f} GiB "
            f"there: each of {new_gpu_nodes} new GPU node(s) pulls its own copy of the serving images "
            f"({per_node / GIB:.1f} GiB) and builds the NCCL-pinned vLLM image on top. "
            "Free some space (`docker system df`; `gpufleet lab down --purge` also removes the lab's images) "
            "or start fewer nodes (`--nodes 1`)")
