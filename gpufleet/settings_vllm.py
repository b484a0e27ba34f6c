"""Settings for vLLM serving beyond the core keys in settings.py (image build, container, readiness): a mixin of gpufleet.settings.HostSettings (flat keys, validated)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class VllmSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
