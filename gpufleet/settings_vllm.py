"""Settings for vLLM serving beyond the core keys in settings.py (image build, container, readiness): a mixin of gpufleet.settings.HostSettings (flat keys, validated).

The core keys (vllm_image, vllm_model, vllm_served_model_name, vllm_tensor_parallel_size,
vllm_quantization, vllm_max_model_len, vllm_gpu_memory_utilization, vllm_port, vllm_extra_args,
vllm_env, vllm_replicas) stay in settings.py. Defaults here are production's.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SIZE = re.compile(r"^\d+(\.\d+)?[bkmg]?$", re.IGNORECASE)  # docker's --shm-size units
MIN_SHUTDOWN_TIMEOUT_VERSION = (0, 18)  # `vllm serve --shutdown-timeout` (vLLM PRs #34730/#36666)


class VllmSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

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
        if not SIZE.match(v):
            raise ValueError("a size docker understands, such as 16g or 512m")
        return v

    @field_validator("vllm_bind_address")
    @classmethod
    def _bind_ip(cls, v: str | None) -> str | None:
        import ipaddress

        if v is not None:
            try:
                ipaddress.ip_address(v)
            except ValueError:
                raise ValueError("an IP address (docker publishes ports on addresses, not names)") from None
        return v

    @field_validator("pip_install_args")
    @classmethod
    def _pip_args_no_credentials(cls, v: str) -> str:
        if re.search(r"://[^/\s]*:[^/\s]*@", v):
            raise ValueError("pip arguments without credentials in URLs (they would show in `docker history`)")
        return v

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
        image = getattr(self, "vllm_image", "")
        match = re.search(r":v?(\d+)\.(\d+)(\.\d+)?(?:@|$)", image)
        if (self.vllm_shutdown_timeout is not None and match
                and (int(match.group(1)), int(match.group(2))) < MIN_SHUTDOWN_TIMEOUT_VERSION):
            found.append(("vllm_shutdown_timeout", self.vllm_shutdown_timeout,
                          f"vLLM >= {'.'.join(map(str, MIN_SHUTDOWN_TIMEOUT_VERSION))} for --shutdown-timeout "
                          f"({image} rejects it); bump vllm_image or set vllm_shutdown_timeout = None"))
        return found
