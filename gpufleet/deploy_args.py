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


def weights_args(settings: HostSettings) -> dict[str, Any]:
    """``operations.weights.stage`` arguments for a node: what deploy.py stages and the rollout prepares."""
    from operations import vllm

    return {"source": settings.vllm_model_source, "model": settings.vllm_model, "revision": settings.vllm_model_revision,
            "url": settings.vllm_model_url, "sha256": settings.vllm_model_sha256, "models_dir": settings.vllm_models_dir,
            "hf_cache_dir": settings.vllm_hf_cache_dir,
            "image": vllm.image_tag(settings.vllm_image, settings.nccl_version, settings.pip_install_args),
            "hf_token_file": settings.vllm_hf_token_file, "hf_endpoint": settings.vllm_env.get("HF_ENDPOINT"),
            "script_dir": settings.vllm_build_dir, "timeout_s": settings.vllm_stage_timeout_s}


def replica_model_args(settings: HostSettings) -> dict[str, Any]:
    """What a replica serves: the hub model at its revision, a staged archive's directory, or a path
    in the image; offline whenever the weights were staged."""
    from operations import weights

    model_dir = (weights.url_dir(settings.vllm_models_dir, settings.vllm_model_sha256)
                 if settings.vllm_model_source == "url" and settings.vllm_model_sha256 else None)
    return {"model": settings.vllm_model, "revision": settings.vllm_model_revision, "model_dir": model_dir,
            "offline": settings.serves_staged_weights()}
