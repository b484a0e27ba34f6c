"""The rollout's lock on a node: a small JSON file the node keeps, read by every deploy's gate.

``/var/lib/gpufleet/rollout.lock`` holds ``{"id", "holder", "since", "state"}``. It is taken
atomically (the shell's noclobber), before the node is drained, and removed after it is
undrained. It lives on the node, not the control host, so that a deploy from any checkout or
machine sees it (operations/serving_gate.py refuses the node to everyone else). A rollout that
resumes under the same id takes its own lock back.

Each command runs with the host's ``_sudo`` (operations/util.sudo_arguments): the lock's directory
is root's, and pyinfra applies ``_sudo`` from host data to operations only, not to a raw command.
"""

from __future__ import annotations

import json
import shlex

from gpufleet.remote import shell
from operations.util import sudo_arguments
from operations.facts.rollout import LOCK_PATH


class LockHeld(Exception):
    """Another rollout holds the node."""


def acquire(host, rollout_id: str, holder: str, since: str, state: str) -> None:
    """Take the lock (or take back our own); raise :class:`LockHeld` naming the holder otherwise."""
    record = json.dumps({"id": rollout_id, "holder": holder, "since": since, "state": state})
    ok, out = shell(host, f"install -d -m 0755 {shlex.quote(LOCK_PATH.rsplit('/', 1)[0])} && "
                          f"if ( set -C; printf '%s\\n' {shlex.quote(record)} > {LOCK_PATH} ) 2>/dev/null; "
                          f"then echo ACQUIRED; else cat {LOCK_PATH}; fi", timeout=30, **sudo_arguments(host))
    if not ok:
        raise LockHeld(f"{host.name}: could not take the rollout lock: {out.strip()[-300:]}")
    if out.strip().endswith("ACQUIRED"):
        return
    try:
        held = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        held = {"id": "unknown", "holder": "unknown (unreadable lock)", "since": "?"}
    if held.get("id") != rollout_id:
        raise LockHeld(f"{host.name} is held by rollout {held.get('id')} ({held.get('holder')}, since "
                       f"{held.get('since')}); continue that one with --resume, or wait for it")
    set_state(host, rollout_id, holder, held.get("since", since), state)


def set_state(host, rollout_id: str, holder: str, since: str, state: str) -> None:
    """Record the node's state in its lock (read by the gate and by a person on the node)."""
    record = json.dumps({"id": rollout_id, "holder": holder, "since": since, "state": state})
    ok, out = shell(host, f"printf '%s\\n' {shlex.quote(record)} > {LOCK_PATH}.new && mv {LOCK_PATH}.new {LOCK_PATH}",
                    timeout=30, **sudo_arguments(host))
    if not ok:
        raise LockHeld(f"{host.name}: could not write the rollout lock: {out.strip()[-300:]}")


def release(host, rollout_id: str) -> None:
    """Remove the lock if it is ours (never another rollout's); raise if it could not be removed,
    so that a node whose lock stays (every deploy refused) is reported, not passed as done."""
    ok, out = shell(host, f"if grep -q {shlex.quote(json.dumps(rollout_id))} {LOCK_PATH} 2>/dev/null; "
                          f"then rm -f {LOCK_PATH}; fi", timeout=30, **sudo_arguments(host))
    if not ok:
        raise LockHeld(f"{host.name}: could not release the rollout lock {LOCK_PATH}: {out.strip()[-300:]}")
