"""Settings for where a node's model weights come from and where they are staged: a mixin of
gpufleet.settings.HostSettings (flat keys, validated). Defaults here are production's.

Weights are staged on the node *before* the container that serves them starts
(operations/weights.py), and replicas then run with ``HF_HUB_OFFLINE=1``: a recreate or a rollout
never waits on a 20 GB download, and a node never serves weights it has not verified.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gpufleet.settings_input import plain_http_url

SHA256 = re.compile(r"^[0-9a-f]{64}$")


class WeightsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # "hub": vllm_model at vllm_model_revision from the Hugging Face hub (HF_ENDPOINT in vllm_env
    #   for a mirror, the token from vllm_hf_token_file) into vllm_hf_cache_dir, every file checked
    #   against the hash its name carries in the cache.
    # "url": an archive (tar, optionally compressed) at vllm_model_url whose sha256 is
    #   vllm_model_sha256, the air-gapped way: unpacked into vllm_models_dir/<sha256>/ and served
    #   from there; vllm_model then only names the model for the planner.
    # "image": the weights are inside vllm_image (vllm_model is a path in it): nothing to stage.
    vllm_model_source: Literal["hub", "url", "image"] = "hub"
    vllm_model_url: str | None = None
    vllm_model_sha256: str | None = None
    # Staged URL archives, one directory per sha256 (never shared with the hub cache).
    vllm_models_dir: str = Field("/var/lib/gpufleet/models", pattern=r"^/")
    # A first download of a 20 GB model over a slow link takes long; a stalled one fails here.
    vllm_stage_timeout_s: int = Field(7200, ge=60, le=86400)

    @field_validator("vllm_model_url")
    @classmethod
    def _plain_url(cls, v: str | None) -> str | None:
        return None if v is None else plain_http_url(v, "of the model archive",
                                                     "it is shown in plans and kept in the staged marker")

    @field_validator("vllm_model_sha256")
    @classmethod
    def _sha256(cls, v: str | None) -> str | None:
        if v is not None and not SHA256.fullmatch(v):
            raise ValueError("the archive's sha256: 64 lowercase hex digits (`sha256sum model.tar`)")
        return v

    def weights_problems(self) -> list[tuple[str, object, str]]:
        """Combinations that cannot work (reported by HostSettings)."""
        problems: list[tuple[str, object, str]] = []
        source = self.vllm_model_source
        model: str = getattr(self, "vllm_model", "")
        if source == "url":
            if self.vllm_model_url is None:
                problems.append(("vllm_model_url", None, "the archive's URL (vllm_model_source = 'url')"))
            if self.vllm_model_sha256 is None:
                problems.append(("vllm_model_sha256", None, "the archive's sha256 (vllm_model_source = 'url'): "
                                 "a node never serves weights it cannot prove"))
            if getattr(self, "vllm_model_revision", None) is not None:
                problems.append(("vllm_model_revision", getattr(self, "vllm_model_revision"),
                                 "unset with vllm_model_source = 'url' (the archive's sha256 pins the weights)"))
        else:
            for key in ("vllm_model_url", "vllm_model_sha256"):
                if getattr(self, key) is not None:
                    problems.append((key, getattr(self, key), f"unset unless vllm_model_source = 'url' "
                                     f"(it is {source!r})"))
        if source == "hub" and model.startswith(("/", "./", "~")):
            problems.append(("vllm_model_source", source, f"'image' or 'url': {model} is a path, not a hub "
                             "repository (a model inside the image: 'image'; an archive to stage: 'url')"))
        return problems

    def serves_staged_weights(self) -> bool:
        """The replicas run offline, from weights staged on the node."""
        return self.vllm_model_source in ("hub", "url")
