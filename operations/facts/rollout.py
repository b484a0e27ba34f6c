"""What a deploy must know before it may interrupt serving: the node's rollout lock and live replicas."""

from __future__ import annotations

import json

from pyinfra.api import FactBase

from . import docker_api
from .util import answer, wrap_answer

LOCK_PATH = "/var/lib/gpufleet/rollout.lock"
VLLM_ROLE_LABEL = "io.gpufleet.role=vllm"
# No Docker (a fresh host), or dockerd stopped by systemd without live-restore (its containers
# stopped with it): nothing runs, and a deploy may start Docker again. Any other failure of
# the list is no answer, and the fact fails (never "no live replicas").
DOCKER_GUARD = ('command -v docker >/dev/null 2>&1 || exit 0; '
                'case "$(systemctl is-system-running 2>/dev/null)" in running|degraded|starting|maintenance) '
                'systemctl is-active --quiet docker || '
                'grep -qs \'"live-restore": *true\' /etc/docker/daemon.json || exit 0;; esac; ')


class RolloutLock(FactBase):
    """The rollout that holds this node, or None: ``{"id", "holder", "since", "state"}``.

    ``gpufleet rollout`` writes the lock before it drains the node and removes it after the node
    is undrained (gpufleet/node_lock.py). An unreadable lock counts as held, by "unknown".

    .. code:: python

        host.get_fact(RolloutLock)
        {"id": "r-20261204-181500-ab12", "holder": "sre@ctl-1", "since": "2026-12-04T18:15:02Z", "state": "updating"}
    """

    command = wrap_answer(f"cat {LOCK_PATH} 2>/dev/null")  # no lock file: no lock

    @staticmethod
    def default():
        return None

    def process(self, output):
        text = "\n".join(answer(output)).strip()
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

    # A Docker that fails or hangs is no answer: the fact fails (strict), and so does the deploy
    # that asked (the serving gate must never read "none" from a Docker it could not ask).
    command = wrap_answer(DOCKER_GUARD + docker_api.names_listed(docker_api.list_path("containers", label=[VLLM_ROLE_LABEL])))

    @staticmethod
    def default():
        return []

    def process(self, output):
        return sorted(line.strip() for line in answer(output, strict=True) if line.strip())


class ReplicaContainers(FactBase):
    """Names of every vLLM replica container on this host, running or not (the kept
    ``.gpufleet-previous`` ones left out): what a deploy compares with the inventory's replicas.

    .. code:: python

        host.get_fact(ReplicaContainers)
        ["vllm-gpu-node-1-vllm-0", "vllm-gpu-node-1-vllm-1"]
    """

    command = wrap_answer(DOCKER_GUARD + docker_api.names_listed(
        docker_api.list_path("containers", all_states=True, label=[VLLM_ROLE_LABEL])))

    @staticmethod
    def default():
        return []

    def process(self, output):
        names = (n.strip() for n in answer(output, strict=True))  # as LiveReplicas: a failed read is no answer
        return sorted(n for n in names if n and not n.endswith(".gpufleet-previous"))
