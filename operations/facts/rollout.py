"""What a deploy must know before it may interrupt serving: the node's rollout lock and live replicas."""

from __future__ import annotations

import json

from pyinfra.api import FactBase

LOCK_PATH = "/var/lib/gpufleet/rollout.lock"
VLLM_ROLE_LABEL = "io.gpufleet.role=vllm"


class RolloutLock(FactBase):
    """The rollout that holds this node, or None: ``{"id", "holder", "since", "state"}``.

    ``gpufleet rollout`` writes the lock before it drains the node and removes it after the node
    is undrained (gpufleet/node_lock.py). An unreadable lock counts as held, by "unknown".

    .. code:: python

        host.get_fact(RolloutLock)
        {"id": "r-20261204-181500-ab12", "holder": "sre@ctl-1", "since": "2026-12-04T18:15:02Z", "state": "updating"}
    """

    command = f"cat {LOCK_PATH} 2>/dev/null || true"

    @staticmethod
    def default():
        return None

    def process(self, output):
        text = "\n".join(output).strip()
        if not text:
            return None
        try:
            lock = json.loads(text)
        except ValueError:
            return {"id": "unknown", "holder": "unknown (unreadable lock file)", "since": "?", "state": "?"}
        return lock if isinstance(lock, dict) else {"id": "unknown", "holder": "unknown", "since": "?", "state": "?"}


class LiveReplicas(FactBase):
    """Names of the running vLLM replica containers on this host (label ``io.gpufleet.role=vllm``).

    .. code:: python

        host.get_fact(LiveReplicas)
        ["vllm-gpu-node-1-vllm-0"]
    """

    command = (f"command -v docker >/dev/null 2>&1 && docker ps --filter label={VLLM_ROLE_LABEL} "
               "--format '{{.Names}}' 2>/dev/null; true")

    @staticmethod
    def default():
        return []

    def process(self, output):
        return sorted(line.strip() for line in output if line.strip())


class ReplicaContainers(FactBase):
    """Names of every vLLM replica container on this host, running or not (the kept
    ``.gpufleet-previous`` ones left out): what a deploy compares with the inventory's replicas.

    .. code:: python

        host.get_fact(ReplicaContainers)
        ["vllm-gpu-node-1-vllm-0", "vllm-gpu-node-1-vllm-1"]
    """

    command = (f"command -v docker >/dev/null 2>&1 && docker ps -a --filter label={VLLM_ROLE_LABEL} "
               "--format '{{.Names}}' 2>/dev/null; true")

    @staticmethod
    def default():
        return []

    def process(self, output):
        return sorted(n.strip() for n in output if n.strip() and not n.strip().endswith(".gpufleet-previous"))
