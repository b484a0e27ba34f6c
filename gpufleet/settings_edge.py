"""Settings for the nginx load balancer and monitoring (DCGM exporter, gpu_monitor, Prometheus): a mixin of gpufleet.settings.HostSettings (flat keys, validated)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class EdgeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
