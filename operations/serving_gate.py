"""The gate that keeps a plain deploy from interrupting a live node.

pyinfra runs each operation on every host at once, so a deploy that recreates vLLM replicas,
restarts Docker, replaces the engine, driver or toolkit, or reboots would take the whole fleet
down together. deploy.py asks this gate about each such operation while it is being planned,
before anything runs on any host:

* a node held by a rollout (its lock, operations/facts/rollout.py) is refused to everyone but
  that rollout, naming the holder and since when: a second rollout, a deploy, a ``drift --fix``;
* on a node with live replicas (running vLLM containers), an operation that would change and
  interrupt serving is refused, naming the operation and pointing to ``gpufleet rollout``;
* fresh nodes and nodes with no live replica converge fully; so does a node drained and locked
  by the rollout that runs this deploy, and every node when ``allow_serving_disruption`` is set
  (a maintenance window).

Refusals are :class:`OperationError` raised while deploy.py is loaded: pyinfra stops before it
executes anything, and ``gpufleet drift`` reports the refusal as drift of that host.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import OperationError

from operations.facts.rollout import LiveReplicas, RolloutLock


class ServingGate:
    """
    Decide, at plan time, whether this deploy may interrupt serving on the current host.

    **Example** (deploy.py):

    .. code:: python

        gate = ServingGate(allow=settings.allow_serving_disruption, rollout_id=settings.rollout_id)
        driver = nvidia.driver(...)
        gate.check(driver, "NVIDIA driver (open modules)")
    """

    def __init__(self, allow: bool = False, rollout_id: str | None = None):
        lock = host.get_fact(RolloutLock)
        if lock is not None and lock.get("id") != rollout_id:
            raise OperationError(
                f"{host.name} is held by rollout {lock.get('id')} ({lock.get('holder')}, since {lock.get('since')}, "
                f"state {lock.get('state')}): wait for it, or continue it with `gpufleet rollout --resume`")
        self.live = host.get_fact(LiveReplicas)
        self.allowed = allow or (lock is not None and rollout_id is not None)

    def check(self, meta, what: str) -> None:
        """Refuse ``what`` when it would change while replicas are live and no rollout drained them."""
        if self.allowed or not self.live:
            return
        if meta.will_change:
            raise OperationError(
                f"{what} would interrupt serving on {host.name}: its replicas {', '.join(self.live)} are live "
                "behind the load balancers. Roll it out node by node with `gpufleet rollout INVENTORY`, "
                "or allow it for a maintenance window with --data allow_serving_disruption=true")
