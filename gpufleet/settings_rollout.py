"""Settings that decide whether a deploy may interrupt serving: a mixin of gpufleet.settings.HostSettings.

A plain ``pyinfra ... deploy.py`` never interrupts a node whose vLLM replicas are live (running):
recreating a replica, restarting Docker, replacing the engine, the driver or the toolkit, and
rebooting are refused there with a pointer to ``gpufleet rollout`` (operations/serving_gate.py).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RolloutSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # A maintenance window: let a plain deploy interrupt live replicas (every node at once, as
    # pyinfra runs each operation on all hosts in parallel). `--data allow_serving_disruption=true`.
    allow_serving_disruption: bool = False
    # Set by `gpufleet rollout` for the deploy it runs on the node it has drained and locked.
    # Not for people: a deploy that names another rollout's id is refused by the node's lock.
    rollout_id: str | None = Field(None, pattern=r"^[a-z0-9-]{1,64}$")
    # How long a run of deploy.py waits for another run's deploy lock on a host before it is
    # refused (operations/deploy_lock.py). `gpufleet rollout` waits longer for the node it has
    # just drained (a nightly drift check holding it for a minute must not fail a drained node).
    deploy_lock_wait_s: int = Field(5, ge=0, le=3600)
    # How long a drain waits for a replica's running and waiting requests to reach 0 (at least a
    # second: 0 would fail every drain before its first look).
    rollout_drain_timeout_s: int = Field(300, ge=1, le=86400)
