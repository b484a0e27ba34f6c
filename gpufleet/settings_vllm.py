"""Settings for vLLM serving (the model, the image built on each node, the replica containers, readiness): a mixin of gpufleet.settings.HostSettings (flat keys, validated).

Every ``vllm_*`` key is here with its one default, except where the model's weights come from and
where they are staged (``vllm_model_source``, ``vllm_model_url``... : settings_weights.py, the
weights component of operations/weights.py). Defaults here are production's; group_data/all.py
pins the image and the model. The refusals of bad input that name these keys (secrets in
``vllm_env`` or ``vllm_extra_args``, debugging settings, a model the planner cannot check) are in
settings_input.py with the others.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gpufleet import PROJECT_ROOT
from gpufleet.settings_input import ipv4_address
from gpufleet.versions import pinned_image

SIZE = re.compile(r"\d+(\.\d+)?[bkmg]?", re.IGNORECASE)  # docker's --shm-size units
MIN_SHUTDOWN_TIMEOUT_VERSION = (0, 18)  # `vllm serve --shutdown-timeout` (vLLM PRs #34730/#36666)
# The config.json fields a model description must give (gpufleet.model_presets.arch_from_config).
MODEL_CONFIG_REQUIRED = ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size")

# NCCL/vLLM environment that must never reach production silently.
FORBIDDEN_ENV = {
    "NCCL_MIN_NRINGS": "deprecated NCCL variable; remove it (use NCCL_MIN_NCHANNELS if you must)",
    "NCCL_MAX_NRINGS": "deprecated NCCL variable; remove it (use NCCL_MAX_NCHANNELS if you must)",
    "NCCL_TREE_THRESHOLD": "deprecated NCCL variable; remove it (NCCL picks its algorithm itself)",
}
# Debugging settings (CUDA_LAUNCH_BLOCKING, NCCL_DEBUG=INFO, VLLM_TEST_*, --enforce-eager...): see
# gpufleet/settings_input.py, with the other refusals of bad input.


class Replica(BaseModel):
    """One load-balanced vLLM replica: a node, the GPUs it owns, the port it serves on."""

    model_config = ConfigDict(extra="forbid")


    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    node: str = ""  # filled in from the host that declares it
    gpus: list[int] = Field(min_length=1)
    port: int = Field(ge=1024, le=65535)
    address: str = ""  # filled in from the node's private_address


def _model_config_path(path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else PROJECT_ROOT / p


class VllmSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # --- the model and how each replica serves it --------------------------------------------------
    vllm_image: str = "vllm/vllm-openai:v0.21.0"
    vllm_model: str = "Qwen/Qwen3-32B-AWQ"
    # The model repository's commit (40 hex digits): a branch or tag moves under a running fleet,
    # and two nodes downloading at different times would serve different weights. None: a warning
    # on every validate for a hub model; a local path (the lab's model is a directory) has none.
    vllm_model_revision: str | None = None
    # The model's config.json for the planner when vllm_model is not one of its presets (a local
    # path, a fine-tune): a path on the control host (absolute, ~/, or relative to the repository
    # root) or the config.json fields themselves. None: vllm_model must be a preset.
    vllm_model_config: str | dict[str, Any] | None = None
    vllm_served_model_name: str = "qwen3-32b-awq"
    vllm_tensor_parallel_size: int = Field(2, ge=1, le=16)
    vllm_quantization: Literal["awq", "awq_marlin", "gptq", "gptq_marlin", "fp8", "compressed-tensors"] | None = "awq_marlin"
    vllm_max_model_len: int = Field(32768, ge=256, le=1_048_576)
    vllm_gpu_memory_utilization: float = Field(0.80, gt=0.05, le=0.98)
    vllm_port: int = Field(8000, ge=1024, le=65535)
    vllm_extra_args: list[str] = Field(default_factory=list)
    vllm_env: dict[str, str] = Field(default_factory=dict)
    # None: one replica per node using the first vllm_tensor_parallel_size GPUs on vllm_port.
    vllm_replicas: list[Replica] | None = None
    vllm_image_disk_gib: float = Field(25.0, ge=0)  # an unpacked vLLM image, with room for the next one (preflight)

    # --- the image built on each node (files/Dockerfile.vllm_rtx5090 on top of vllm_image) -------
    # Extra `pip install` arguments for the NCCL wheel in that build: "" means PyPI;
    # "--index-url https://pypi.mirror.example/simple" for a mirror; the lab serves the wheels as
    # "--no-index --find-links http://lab-repo/wheels/". Hashed into the image tag; do not put
    # credentials here (build args show in `docker history`), use the host's pip.conf instead.
    pip_install_args: str = ""
    vllm_build_dir: str = Field("/var/lib/gpufleet/build/vllm", pattern=r"^/")  # Dockerfile + check on the host

    # --- the replica containers --------------------------------------------------------------------
    # /dev/shm for NCCL: without P2P between GeForce cards NCCL's SHM transport goes through it.
    vllm_shm_size: str = "16g"
    # On SIGTERM vLLM stops taking requests and drains in-flight ones for up to this many seconds
    # (`--shutdown-timeout`, vLLM >= 0.18; None leaves the flag out). `docker stop` waits
    # vllm_stop_timeout (default: this + 15 s) before SIGKILL, so a drain is never cut short.
    vllm_shutdown_timeout: int | None = Field(30, ge=0, le=3600)
    vllm_stop_timeout: int | None = Field(None, ge=1, le=7200)
    vllm_restart_policy: Literal["unless-stopped", "always", "on-failure"] = "unless-stopped"
    # Address the replica's port is published on. None: the node's private_address, which must
    # then be an IP. "0.0.0.0" only where the node's network is private anyway (the lab).
    vllm_bind_address: str | None = None
    # Host directory mounted as the container's Hugging Face cache (models survive recreation).
    vllm_hf_cache_dir: str = Field("/var/lib/gpufleet/hf-cache", pattern=r"^/")
    # Host directory of vLLM's own caches, one subdirectory per replica (torch.compile artefacts
    # and model inspections survive recreation: a restart skips that work). None: not kept.
    vllm_cache_dir: str | None = Field("/var/lib/gpufleet/vllm-cache", pattern=r"^/")
    # Control-side files holding the Hugging Face token / the API key (one line, nothing else).
    # Uploaded as root-only env files (/etc/gpufleet/*.env, 0600) and passed with --env-file: they
    # never appear on a command line or in pyinfra's output. None: no token / no API key.
    vllm_hf_token_file: str | None = None
    vllm_api_key_file: str | None = None

    # --- readiness gate (operations/vllm.ready) ------------------------------------------------
    # Seconds to wait for /health, /v1/models and one completion after a (re)start. Loading a
    # 32B AWQ model from a warm cache over two GPUs takes minutes; a first download much longer.
    vllm_ready_timeout: int = Field(1200, ge=10, le=7200)

    @field_validator("vllm_shm_size")
    @classmethod
    def _shm_size(cls, v: str) -> str:
        if not SIZE.fullmatch(v):
            raise ValueError("a size docker understands, such as 16g or 512m")
        return v

    @field_validator("vllm_bind_address")
    @classmethod
    def _bind_ip(cls, v: str | None) -> str | None:
        return None if v is None else ipv4_address(v, "an IP address literal: docker publishes ports on addresses, "
                                                        "not names (or leave it unset for the host's private_address)")

    @field_validator("vllm_image")
    @classmethod
    def _image_pinned(cls, v: str) -> str:
        return pinned_image(v)

    @field_validator("vllm_env")
    @classmethod
    def _env_not_deprecated(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [f"{k} ({why})" for k, why in FORBIDDEN_ENV.items() if k in v]
        if v.get("VLLM_USE_V1") == "0":
            bad.append("VLLM_USE_V1=0 (the V0 engine is removed in current vLLM)")
        if bad:
            raise ValueError("no deprecated settings: " + "; ".join(bad))
        return v

    @field_validator("vllm_model_config")
    @classmethod
    def _model_config(cls, v: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        from gpufleet.model_presets import arch_from_config, load_config_file

        if isinstance(v, dict):
            missing = [k for k in MODEL_CONFIG_REQUIRED if k not in v and k not in (v.get("text_config") or {})]
            if missing:
                raise ValueError(f"config.json fields including {', '.join(missing)}")
            try:
                arch_from_config(v)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"config.json fields the planner can read: {exc}") from None
        elif isinstance(v, str):
            path = _model_config_path(v)
            try:
                load_config_file(path)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"a readable config.json with the planner's fields: {exc}") from None
        return v

    @field_validator("pip_install_args")
    @classmethod
    def _pip_args_no_credentials(cls, v: str) -> str:
        if re.search(r"://[^/\s]*:[^/\s]*@", v):
            raise ValueError("pip arguments without credentials in URLs (they would show in `docker history`)")
        return v

    def replicas_declared(self) -> list[Replica]:
        """The replicas this host serves: ``vllm_replicas``, else one over the first TP GPUs (none without GPUs)."""
        if self.vllm_replicas is not None:
            return list(self.vllm_replicas)
        gpu_count = getattr(self, "gpu_count", 0)  # HostSettings' hardware key
        if not gpu_count:
            return []
        gpus = list(range(min(self.vllm_tensor_parallel_size, gpu_count)))
        return [Replica(name="vllm-0", gpus=gpus, port=self.vllm_port)]

    def planner_model(self):
        """What the planner plans: the model's config when given, else ``vllm_model`` (a preset)."""
        from gpufleet.model_presets import arch_from_config, load_config_file

        v = self.vllm_model_config
        if isinstance(v, dict):
            return arch_from_config(v, name=self.vllm_served_model_name, source="vllm_model_config")
        if isinstance(v, str):
            return load_config_file(_model_config_path(v))
        return self.vllm_model

    def vllm_stop_timeout_effective(self) -> int | None:
        if self.vllm_stop_timeout is not None:
            return self.vllm_stop_timeout
        from operations.vllm import default_stop_timeout

        return default_stop_timeout(self.vllm_shutdown_timeout)

    def vllm_problems(self) -> list[tuple[str, object, str]]:
        """Combinations of this mixin's keys that cannot work (reported by HostSettings)."""
        problems: list[tuple[str, object, str]] = []
        if (self.vllm_stop_timeout is not None and self.vllm_shutdown_timeout is not None
                and self.vllm_stop_timeout < self.vllm_shutdown_timeout):
            problems.append(("vllm_stop_timeout", self.vllm_stop_timeout,
                             f">= vllm_shutdown_timeout ({self.vllm_shutdown_timeout}) so a drain is not killed"))
        return problems

    def vllm_warnings(self) -> list[tuple[str, object, str]]:
        """Allowed, but likely wrong: shown, never fatal."""
        found: list[tuple[str, object, str]] = []
        image = self.vllm_image
        match = re.search(r":v?(\d+)\.(\d+)(\.\d+)?(?:@|$)", image)
        if (self.vllm_shutdown_timeout is not None and match
                and (int(match.group(1)), int(match.group(2))) < MIN_SHUTDOWN_TIMEOUT_VERSION):
            found.append(("vllm_shutdown_timeout", self.vllm_shutdown_timeout,
                          f"vLLM >= {'.'.join(map(str, MIN_SHUTDOWN_TIMEOUT_VERSION))} for --shutdown-timeout "
                          f"({image} rejects it); bump vllm_image or set vllm_shutdown_timeout = None"))
        return found
