"""The gate that keeps a plain deploy from interrupting a live node.

pyinfra runs each operation on every host at once, so a deploy that recreates vLLM replicas,
restarts Docker, replaces the engine, driver or toolkit, or reboots would take the whole fleet
down together. deploy.py asks this gate about each such operation while it is being planned,
before anything runs on any host:

* a node held by a rollout (its lock, operations/facts/rollout.py) is refused to everyone but
  that rollout, naming the holder and since when: a second rollout, a deploy, a ``drift --fix``;
  so is the Milvus host of its own (:func:`refuse_other_rollouts`, its only gate: it serves no replica);
* on a node with live replicas (running vLLM containers), an operation that would change and
  interrupt serving is refused, naming the operation and pointing to ``gpufleet rollout``;
* fresh nodes and nodes with no live replica converge fully; so does a node drained and locked
  by the rollout that runs this deploy (its lock says ``draining``; not one the rollout changes in
  place, whose replicas may be live again by its turn), and every node when
  ``allow_serving_disruption`` is set (a maintenance window).

Refusals are raised while deploy.py is loaded: pyinfra stops before it executes anything, and
``gpufleet drift`` reports the refusal as drift of that host. A refusal *because serving would be
interrupted* is a :class:`ServingInterruption`, typed with what the change needs, so that
``gpufleet rollout`` plans from the type and never from the message:

* ``REPLICAS``: replica containers are recreated; drain the node, update it, and roll it back to
  the previous containers if the new ones do not validate;
* ``GPU_STACK``: the driver, toolkit, engine, daemon.json or a reboot; drain the node *and stop its
  GPU containers* (a daemon-reload or a new driver takes the GPUs from running containers), and
  never roll back automatically (a machine does not downgrade a driver).
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import OperationError

from operations.facts.rollout import LiveReplicas, RolloutLock


REPLICAS, GPU_STACK = "replicas", "gpu-stack"
# What the rollout's lock says on a node it drained before its update ("updating": one it changes
# in place, drained nowhere). Only a drained node's live replicas may be interrupted by the rollout.
DRAINED_LOCK_STATE = "draining"


class ServingInterruption(OperationError):
    """An operation was refused because it would interrupt live replicas.

    + what: the operation, as an operator reads it (``NVIDIA driver (open modules)``)
    + kind: ``REPLICAS`` or ``GPU_STACK`` (what a rollout must do around it)
    """

    def __init__(self, message: str, what: str, kind: str):
        super().__init__(message)
        self.what, self.kind = what, kind


class RolloutLockHeld(OperationError):
    """The node is held by another rollout: nobody else may change it."""


def refuse_other_rollouts(rollout_id: str | None = None) -> dict | None:
    """
    Refuse the current host to everyone but the rollout that holds its lock; return the lock (or None).

    The whole gate on a host that serves no replica (the Milvus host of its own, which
    ``gpufleet rollout`` also locks, backs up and updates): nothing on it is drained, but a deploy
    must not change it under a rollout, nor after one that stopped there and left it locked.

    **Example** (deploy.py):

    .. code:: python

        refuse_other_rollouts(settings.rollout_id)
    """
    lock = host.get_fact(RolloutLock)
    if lock is not None and lock.get("id") != rollout_id:
        raise RolloutLockHeld(
            f"{host.name} is held by rollout {lock.get('id')} ({lock.get('holder')}, since {lock.get('since')}, "
            f"state {lock.get('state')}): wait for it, or continue it with `gpufleet rollout --resume`")
    return lock


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
        lock = refuse_other_rollouts(rollout_id)
        self.live = host.get_fact(LiveReplicas)
        # A node the rollout planned as in place (its replicas were not live then) may serve again by
        # its turn: the lock alone does not let an interruption through, only a drain does.
        self.allowed = allow or (lock is not None and rollout_id is not None
                                 and lock.get("state") == DRAINED_LOCK_STATE)

    def check(self, meta, what: str, kind: str = GPU_STACK) -> None:
        """Refuse ``what`` when it would change while replicas are live and no rollout drained them."""
        if self.allowed or not self.live:
            return
        if meta.will_change:
            raise ServingInterruption(
                f"{what} would interrupt serving on {host.name}: its replicas {', '.join(self.live)} are live "
                "behind the load balancers. Roll it out node by node with `gpufleet rollout INVENTORY`, "
                "or allow it for a maintenance window with --data allow_serving_disruption=true", what, kind)
