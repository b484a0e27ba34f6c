"""Arguments of deploy.py's operations that the control side also runs on its own (the rollout's prepare)."""

from __future__ import annotations

from typing import Any

from gpufleet.settings import HostSettings


def vllm_image_args(settings: HostSettings) -> dict[str, Any]:
    """``operations.vllm.image`` arguments for a node: the image deploy.py builds and the rollout prepares."""
    from operations import vllm

    return {"base_image": settings.vllm_image, "nccl_version": settings.nccl_version,
            "pip_install_args": settings.pip_install_args, "build_dir": settings.vllm_build_dir,
            "require_arch": vllm.arch_of(settings.gpu_compute_capability)}
