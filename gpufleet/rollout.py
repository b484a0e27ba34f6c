"""`gpufleet rollout`: change a live fleet node by node, with no failed requests.

The states a node goes through, as in the NVIDIA GPU Operator's upgrade controller::

    pending -> draining -> updating -> validating -> undraining -> done
                               \\            \\
                                \\            -> rolled-back (container/config change: previous spec back, undrained)
                                 -> failed    (driver/toolkit/engine change, or unreachable: stays drained)

The policy:

* **plan** first: the same deploy.py, planned through pyinfra's API. A node whose plan is
  refused by the serving gate (operations/serving_gate.py) has a *disruptive* change: it is
  drained before it is updated. A node with only harmless changes is updated in place.
* **prepare** every changed node in parallel without disruption: build the vLLM image and stage
  the model weights (a new pin stages beside the weights being served).
* **batches**: ``canary`` nodes first, then at most ``max_unavailable`` at a time, and never a
  batch that would leave no live replica behind the load balancers. The nodes of a batch are
  drained one by one, converged by one deploy together (in parallel, as pyinfra runs every
  operation on all its hosts), then validated and undrained one by one.
* per node: take its lock (gpufleet/node_lock.py) -> drain its replicas on every load balancer
  and wait until they have nothing running or waiting (vLLM's /metrics) -> for a GPU-stack
  change (driver, toolkit, engine, daemon.json), stop the node's GPU containers -> converge it
  with deploy.py (which reboots when the loaded driver is not the pin, and checks the new one
  loaded) -> validate (readiness by a real completion, the loaded driver and the NCCL vLLM loads
  are the pins, the verify ladder) -> undrain -> release the lock.
* **failure** stops the rollout (exit 2): a replica change is rolled back to the container the
  update replaced (kept stopped as ``<name>.gpufleet-previous``) and the node is undrained once
  ready; a GPU-stack change, or an unreachable node, stays drained and failed. The rest of the
  fleet keeps serving.
* **the Milvus host of its own** (group vector_db, not a GPU node), when it changes, is rolled
  first, alone (:func:`make_batches`): lock -> back Milvus up when the change recreates it ->
  update in place (it serves no load-balanced replica: nothing is drained; the RAG apps wait for
  Milvus while it restarts) -> validate (Milvus answers) -> the row counts kept -> unlock. A failed
  backup puts it back unchanged; a failed update, validation or row check leaves it failed and
  locked, the error naming the backup and the restore command (Milvus is never rolled back), and
  no GPU node is touched.

The state lives on the control host (one JSON file per rollout, ``GPUFLEET_STATE_DIR`` or
``~/.local/state/gpufleet/rollouts``) and in a lock on each node; ``--resume`` continues the
last unfinished rollout of an inventory from its file: done nodes stay done, the others start
again from ``draining`` (every step is idempotent). Exit codes: 0 done, 2 stopped after a
failure, 1 could not start.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import secrets
import shlex
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

# What a disruptive change needs: the serving gate's typed refusal says which (re-exported here).
from gpufleet.private_files import private_dir, state_root, write_private
from operations.serving_gate import DRAINED_LOCK_STATE, GPU_STACK, REPLICAS  # noqa: F401

PENDING, UPDATING, VALIDATING, UNDRAINING = "pending", "updating", "validating", "undraining"
DRAINING = DRAINED_LOCK_STATE  # also what the node's lock says, which lets the rollout's update through the gate
DONE, FAILED, ROLLED_BACK = "done", "failed", "rolled-back"
FINAL = (DONE, FAILED, ROLLED_BACK)
EXIT_DONE, EXIT_CANNOT_START, EXIT_STOPPED = 0, 1, 2


class RolloutError(Exception):
    """The rollout cannot start (bad input, a lock held by another rollout, nothing reachable)."""


@dataclass
class NodeRollout:
    name: str
    changes: list[str] = field(default_factory=list)
    # REPLICAS (recreated; rolled back on failure) or GPU_STACK (driver, toolkit, engine,
    # daemon.json, reboot: GPU containers stopped first, never rolled back automatically);
    # "" for a change made in place (nothing drained).
    kind: str = ""
    state: str = PENDING
    error: str | None = None
    history: list[tuple[str, float]] = field(default_factory=list)  # (state, seconds since start)
    # Replica container ids before the update: a rollback puts back only what the update replaced.
    before: dict[str, str] = field(default_factory=dict)
    # Replicas removed from the inventory that ran on the node when it was drained (retired by the update).
    retiring: list[str] = field(default_factory=list)
    # A Milvus change: the backup taken before the update, and the rows each collection had then.
    data_backup: str | None = None
    data_rows: dict[str, int] = field(default_factory=dict)

    @property
    def disruptive(self) -> bool:
        """Drained before it is updated: whatever its kind, the change interrupts serving."""
        return bool(self.kind)

    @property
    def rollback_allowed(self) -> bool:
        return self.kind != GPU_STACK  # a machine never downgrades a driver


@dataclass
class Rollout:
    id: str
    inventory: str
    overrides: dict[str, Any]
    holder: str
    since: str
    canary: int
    max_unavailable: int
    nodes: dict[str, NodeRollout]
    batches: list[list[str]] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    finished: float | None = None
    exit_code: int | None = None

    # ------------------------------------------------------------------ state file ------------
    def path(self) -> Path:
        return state_dir() / f"{self.id}.json"

    def save(self) -> None:
        # Atomic: a control host that dies mid-write leaves the previous state. 0600 (private_files).
        write_private(self.path(), json.dumps(self.as_dict(), indent=2) + "\n")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["nodes"] = {n: asdict(v) for n, v in self.nodes.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Rollout:
        nodes = {n: NodeRollout(**{**_with_kind(v), "history": [tuple(h) for h in v["history"]]})
                 for n, v in d["nodes"].items()}
        return cls(**{**d, "nodes": nodes})


# A state file written before kinds existed says only "disruptive": these changes were never rolled back then.
_OLD_NO_ROLLBACK = ("NVIDIA driver", "NVIDIA Container Toolkit", "Docker engine", "Reboot")


def _with_kind(node: dict[str, Any]) -> dict[str, Any]:
    node = dict(node)
    if node.pop("disruptive", False) and not node.get("kind"):
        old_gpu_stack = any(c.startswith(_OLD_NO_ROLLBACK) for c in node.get("changes", []))
        node["kind"] = GPU_STACK if old_gpu_stack else REPLICAS
    return node


def state_dir() -> Path:
    return state_root() / "rollouts"


class RunLock:
    """One process at a time runs a rollout: an exclusive ``flock`` on ``<state file>.lock``,
    taken when made, released when the process ends or :meth:`release` (``with`` does it).

    Two ``--resume`` of the same rollout would both take the nodes' locks (a node lock takes its
    own rollout's id back) and write the same state file, one losing the other's history. The
    state directory is local to the control host (flock on NFS does not hold between processes
    of one host the same way).
    """

    def __init__(self, rollout: Rollout):
        private_dir(state_dir())
        self.path = rollout.path().with_suffix(".lock")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise RolloutError(f"rollout {rollout.id} is being run by another gpufleet process on this control "
                               f"host ({self.path} is locked): wait for it to end") from None

    def release(self) -> None:
        os.close(self.fd)  # the file stays: removing a lock file others may open races them

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def since_rollback(history: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """The node's states since its last rollback (all of them if it was never rolled back)."""
    last = max((i for i, (state, _) in enumerate(history) if state == ROLLED_BACK), default=-1)
    return history[last + 1:]


def last_unfinished(inventory: str) -> Rollout | None:
    """The latest rollout of ``inventory`` that did not end with every node done (interrupted or stopped)."""
    found = []
    for path in state_dir().glob("r-*.json"):
        try:
            data = json.loads(path.read_text())
            if data["inventory"] != inventory:
                continue
            if data.get("exit_code") != EXIT_DONE and any(n["state"] != DONE for n in data["nodes"].values()):
                found.append(Rollout.from_dict(data))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # One damaged file (a disk that filled up, a hand edit) must not stop every --resume.
            print(f"gpufleet: skipped the unreadable rollout state file {path}: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
    return max(found, key=lambda r: r.started) if found else None


def new_id() -> str:
    return time.strftime("r-%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(2)


# ----------------------------------------------------------------------------------- policy ------

def make_batches(nodes: list[str], canary: int, max_unavailable: int, data: tuple[str, ...] = ()) -> list[list[str]]:
    """The canary batch first, then batches of at most ``max_unavailable`` nodes, in inventory order.

    ``data``, the Milvus host of its own when it changes, is prepended here, as a batch of its own
    before every GPU node: its backup is taken while the whole fleet is healthy, and a change that
    loses rows stops the rollout before any GPU node is drained. It serves no load-balanced replica,
    so it is neither the canary nor counted in ``max_unavailable``: the canary is still the first
    batch of GPU nodes, and :func:`check_capacity` finds nothing drained in its batch.

    >>> make_batches(["n1", "n2", "n3"], canary=1, max_unavailable=2, data=["db-1"])
    [['db-1'], ['n1'], ['n2', 'n3']]
    """
    if canary < 0 or max_unavailable < 1:
        raise RolloutError(f"--canary must be >= 0 and --max-unavailable >= 1 (got {canary}, {max_unavailable})")
    batches = [list(data)]
    batches += [nodes[:canary]] if canary else []
    rest = nodes[canary:]
    batches += [rest[i:i + max_unavailable] for i in range(0, len(rest), max_unavailable)]
    return [b for b in batches if b]


def check_capacity(batches: list[list[str]], node_replicas: dict[str, list[str]], live_replicas: list[str]) -> None:
    """Refuse a plan in which a drained batch would leave no live replica behind the load balancers.

    ``node_replicas``: what draining each node takes out of rotation (its live replicas; nothing
    for a node changed in place). ``live_replicas``: the replicas running *now* (read from the
    nodes while planning), not the inventory's: a replica that is down or on an unreachable node
    carries no traffic. A batch that takes nothing live out is never refused, so the rollout that
    repairs an outage can run.
    """
    for batch in batches:
        drained = {r for n in batch for r in node_replicas.get(n, [])}
        left = set(live_replicas) - drained
        if drained and not left:
            live = ", ".join(sorted(live_replicas)) or "none"
            raise RolloutError(f"draining {', '.join(batch)} would leave no live replica behind the load "
                               f"balancers (live now: {live}): lower --max-unavailable/--canary, bring a replica "
                               "back, or add one")


# ----------------------------------------------------------------------------------- running -----

class Runner:
    """Carries one rollout through its states, saving the state file at every transition."""

    def __init__(self, rollout: Rollout, say: Callable[[str], None] = print):
        self.rollout = rollout
        self.say = say

    def node_state(self, node: NodeRollout, state: str, error: str | None = None) -> None:
        node.state, node.error = state, error
        elapsed = time.time() - self.rollout.started
        node.history.append((state, round(elapsed, 1)))
        self.rollout.save()
        self.say(f"{elapsed:7.1f}s  {node.name:<16} {state}" + (f": {error}" if error else ""))

    def run(self) -> int:
        from gpufleet import rollout_steps as steps

        r = self.rollout
        todo = [n for b in r.batches for n in b if r.nodes[n].state not in (DONE,)]
        # Only nodes whose plan builds an image or stages weights (or may: a GPU-stack plan stops
        # early) have something to prepare.
        to_prepare = [n for n in todo if steps.needs_prepare(r.nodes[n].changes, r.nodes[n].kind)]
        if to_prepare:
            self.say(f"{r.id}: preparing {', '.join(to_prepare)} (image builds, weights staged; nothing interrupted)")
            for name, why in steps.prepare(r, to_prepare).items():
                if why:
                    self.node_state(r.nodes[name], FAILED, f"prepare: {why}")
                    return self.finish(EXIT_STOPPED)
        for batch in r.batches:
            nodes = [r.nodes[n] for n in batch if r.nodes[n].state != DONE]
            if nodes and not (self.capacity_holds(nodes, steps) and self.roll_batch(nodes, steps)):
                return self.finish(EXIT_STOPPED)
        return self.finish(EXIT_DONE)

    def capacity_holds(self, nodes: list[NodeRollout], steps) -> bool:
        """Before a batch is drained: the replicas running *now* keep one serving without it.

        The plan checked the same rule with what ran when it was planned; a replica elsewhere may
        have died since (minutes into a long rollout, or days before a --resume). A batch that
        would leave none stops the rollout before anything is drained: its nodes fail untouched,
        and --resume checks again.
        """
        drained = [node.name for node in nodes if node.disruptive]
        if not drained:
            return True
        live = steps.fleet_live_replicas(self.rollout)
        try:
            check_capacity([drained], {n: live.get(n, []) for n in drained}, [r for names in live.values() for r in names])
        except RolloutError as exc:
            for node in nodes:
                self.node_state(node, FAILED, f"not drained: {exc}")
            return False
        return True

    def roll_batch(self, nodes: list[NodeRollout], steps) -> bool:
        """Roll the nodes of one batch together: each is locked and drained, then one deploy
        converges them all at once (pyinfra runs each operation on every host in parallel), then
        each is validated and undrained. A node that fails gets its own failure handling; the
        others of the batch finish. True when every node is done."""
        r = self.rollout
        ready = [node for node in nodes if self._step(node, steps, self._prepare_node)]
        if ready:
            try:
                results = steps.update(r, [node.name for node in ready])
            except Exception as exc:  # noqa: BLE001 - the whole batch's deploy could not run
                results = {node.name: (False, f"{type(exc).__name__}: {exc}") for node in ready}
            for node in ready:
                updated, why = results.get(node.name, (False, "the deploy did not report this node"))
                if not updated:
                    self.fail(node, why, steps, nothing_ran=why.startswith(steps.REFUSED))
                    continue
                self._step(node, steps, self._finish_node)
        return all(node.state == DONE for node in nodes)

    def _step(self, node: NodeRollout, steps, work) -> bool:
        try:
            return work(node, steps)
        except Exception as exc:  # noqa: BLE001 - whatever breaks, the node gets a state and the fleet a report
            why = str(exc) if isinstance(exc, steps.StepError) else f"{type(exc).__name__}: {exc}"
            return self.fail(node, why, steps)

    def _prepare_node(self, node: NodeRollout, steps) -> bool:
        """lock -> draining -> updating (GPU containers stopped for a GPU-stack change)."""
        r = self.rollout
        # The lock says what the rollout does there: a host changed in place is never drained.
        running = steps.lock(r, node.name, DRAINING if node.disruptive else UPDATING)  # and what it runs now
        if not node.before:  # on --resume, keep what was there before the first attempt
            node.before = running["before"]
        if node.disruptive:
            # Recorded before anything is drained: a failure from here on undrains them too.
            node.retiring = sorted(set(node.retiring) | set(running["retiring"]))
            self.node_state(node, DRAINING)
            steps.drain(r, node.name, node.retiring)
        if steps.changes_milvus(node.changes) and not node.data_backup:
            # The fleet's Milvus is about to be recreated: a backup first (kept on --resume), and
            # its row counts to compare with after the update.
            node.data_backup, node.data_rows = steps.back_up_milvus(r)
            self.say(f"{'':7}   {node.name:<16} Milvus backed up to {node.data_backup} "
                     f"({', '.join(f'{c} {n} rows' for c, n in node.data_rows.items()) or 'no collections'})")
            r.save()
        self.node_state(node, UPDATING)
        if node.kind == GPU_STACK:  # a new driver or a daemon-reload takes the GPUs from running containers
            steps.stop_gpu_containers(r, node.name)
        return True

    def _finish_node(self, node: NodeRollout, steps) -> bool:
        """validating -> undraining -> done (or the node's failure handling)."""
        r = self.rollout
        self.node_state(node, VALIDATING)
        valid, why = steps.validate(r, node.name)
        if not valid:
            return self.fail(node, why, steps)
        if node.data_backup:
            kept, why = steps.milvus_rows_kept(r, node.data_rows, node.data_backup)
            if not kept:
                return self.stop_for_data(node, why, steps)
        if node.disruptive:
            self.node_state(node, UNDRAINING)
            steps.undrain(r, node.name, node.retiring)
        steps.unlock(r, node.name, forget_previous=True)  # validated: the rollback's containers can go
        self.node_state(node, DONE)
        return True

    def stop_for_data(self, node: NodeRollout, why: str, steps) -> bool:
        """Milvus lost rows across the change. The node's replicas validated, so they are not rolled
        back (a rollback would not bring rows back) and go back into rotation; the node stays locked
        and the rollout stops, for a person to restore (the error names the backup)."""
        if node.disruptive:
            self.node_state(node, UNDRAINING)
            try:
                steps.undrain(self.rollout, node.name, node.retiring)
            except Exception as exc:  # noqa: BLE001 - still the data is the news
                why = f"{why}; undrain failed too: {exc}"
        self.node_state(node, FAILED, f"{why} (the node stays locked; restore, then --resume checks again)")
        return False

    def fail(self, node: NodeRollout, why: str, steps, nothing_ran: bool = False) -> bool:
        """The node's failure handling; ``nothing_ran``: its update was refused while it was planned."""
        # What this rollout did on the node since it was last rolled back (a rollback put the node
        # back as it was: a --resume of a rolled-back node starts from nothing changed).
        since = since_rollback(node.history)
        updated_before = any(state == UPDATING for state, _ in since)
        # Still pending, or stopped before in this rollout and neither drained nor updated since it
        # was last rolled back (a --resume that fails again at its lock or its Milvus backup):
        # nothing this rollout did is on the node. (One drained before and put back counts as
        # touched: its undrain may have failed too, and a lock kept is the safe side.)
        untouched = node.state == PENDING or (node.state in (FAILED, ROLLED_BACK) and not any(
            state in (DRAINING, UPDATING) for state, _ in since))
        if nothing_ran and not node.disruptive and not any(state == UPDATING for state, _ in since[:-1]):
            # Planned as in place, refused now (its replicas serve again): nothing ran, nothing drained.
            untouched = True
            why = (f"{why}; nothing ran there: it was planned as an in-place change when it served "
                   "nothing; start a new rollout, which plans it again and drains it")
        if untouched or (node.state == DRAINING and not updated_before):
            # Nothing changed on the node: what ran there must be read again when it is retried
            # (--resume), or a rollback could put back a container this rollout never replaced.
            node.before = {}
        if untouched:  # its lock may be taken, nothing else happened: give it back
            try:
                steps.unlock(self.rollout, node.name)
            except Exception:  # noqa: BLE001 - unreachable: its lock is released with --resume
                pass
            self.node_state(node, FAILED, why)
            return False
        if node.state == DRAINING and not updated_before:  # nothing changed yet: put it back into rotation
            try:
                steps.undrain(self.rollout, node.name, node.retiring, check=False)
                steps.unlock(self.rollout, node.name)
            except Exception as exc:  # noqa: BLE001
                why = f"{why}; undrain failed too: {exc}"
            self.node_state(node, FAILED, why)
            return False
        if node.data_backup and updated_before:  # Milvus is never rolled back: say where its data is
            why = (f"{why}; Milvus was backed up before the change to {node.data_backup}: "
                   f"`{restore_command(self.rollout.inventory, node.data_backup)}` if it lost data")
        if node.rollback_allowed and node.disruptive and node.state in (UPDATING, VALIDATING):
            self.say(f"{'':7}   {node.name:<16} rolling back: {why}")
            try:
                steps.rollback(self.rollout, node.name, node.before, node.retiring)
                steps.undrain(self.rollout, node.name, node.retiring, check=False)
                steps.unlock(self.rollout, node.name)
                node.before = {}  # it runs what it ran before: a --resume reads it again
                self.node_state(node, ROLLED_BACK, why)
                return False
            except Exception as exc:  # noqa: BLE001
                why = f"{why}; the rollback failed too: {exc}"
        kept = "drained and locked" if node.disruptive else "locked"
        self.node_state(node, FAILED, f"{why} (the node stays {kept}; fix it, then --resume)"
                        if node.state not in (PENDING,) else why)
        return False

    def finish(self, code: int) -> int:
        self.rollout.finished = time.time()
        self.rollout.exit_code = code
        self.rollout.save()
        return code


def restore_command(inventory: str, backup_dir: str) -> str:
    """How a person puts back the Milvus backup a rollout took before its change."""
    return f"gpufleet restore {shlex.quote(inventory)} --from {shlex.quote(backup_dir)} --replace"


def holder() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def report(rollout: Rollout) -> dict[str, Any]:
    return {"id": rollout.id, "exit_code": rollout.exit_code, "ok": rollout.exit_code == EXIT_DONE,
            "duration_seconds": round((rollout.finished or time.time()) - rollout.started, 1),
            "state_file": str(rollout.path()), **rollout.as_dict()}
