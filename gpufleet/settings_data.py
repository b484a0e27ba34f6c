"""Settings for Milvus and the RAG application: a mixin of gpufleet.settings.HostSettings (flat keys, validated)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class DataSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
