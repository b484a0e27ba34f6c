"""One deploy at a time per host: a lock taken while deploy.py is planned, held until the run ends.

Two runs of deploy.py against the same host would race: on apt's lock, on ``docker run --name``,
on nginx's ``.gpufleet-new``/``.gpufleet-old`` (a roll-back could restore the other run's file),
and each would plan from facts the other is about to change. So deploy.py's first step on every
host takes an exclusive ``flock`` on ``/var/lib/gpufleet/deploy.lock`` *on that host*, before any
fact is read for the plan; a second run (from any checkout, any control host) is refused while
deploy.py is loaded, before anything runs anywhere, naming who holds the host and since when.
deploy.py takes it at the head of the fact prefetch's one command (:class:`DeployLock`, led by
operations/fact_prefetch.py): the reads in that command run only once it is held, and the lock
costs no round trip of its own (one per host per run, ~0.05-0.08 s on the lab).

**Held by the run's SSH connection, released when it closes.** The lock's file descriptor is kept
by a small watcher process on the host that exits when the SSH session process that took it
(the nearest ``sshd`` ancestor of the command) is gone. pyinfra keeps one connection per host
from planning to the end of execution, so the lock covers the whole run: plan, ``--diff``, the
confirmation prompt, execution. It is released however the run ends (success, failure, Ctrl-C, a
killed control host once TCP gives up), so there is no stale lock to break by hand. A released
lock is free again within a tenth of a second (the watcher is GNU ``tail --pid``); the next run
waits up to ``WAIT_S`` for it (a rollout runs deploy.py for one node right after the previous run
closed its connections).

Every run of deploy.py takes it, ``--dry`` and ``gpufleet drift`` included: they plan from the
host's state, and a plan read while another deploy is half-way is wrong. ``gpufleet drift``
reports a held host as not checked, with the holder. A rollout's own deploy runs take it too (one
at a time, in one process). The rollout's node lock (gpufleet/node_lock.py) is a different thing:
it spans many runs and processes, and says the node is drained.

Over pyinfra's other connectors (``@local``, ``@docker``) there is no session of the run's own to
outlive, so no lock is taken and a warning is logged; the same if an SSH command finds no ``sshd``
above it.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import shlex
import socket
import time

from pyinfra import host, state
from pyinfra.api import OperationError, StringCommand
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS, pop_global_arguments
from pyinfra.connectors.ssh import SSHConnector

LOCK_DIR = "/var/lib/gpufleet"
LOCK_FILE = f"{LOCK_DIR}/deploy.lock"
WAIT_S = 5

logger = logging.getLogger(__name__)


class DeployLockHeld(OperationError):
    """Another run of deploy.py holds this host."""


def holder_record(what: str) -> dict[str, object]:
    """Who takes the lock: user@control-host, process id, what runs, since when (UTC)."""
    return {"holder": f"{getpass.getuser()}@{socket.gethostname()}", "pid": os.getpid(), "what": what,
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def lock_command(record: dict[str, object], wait_s: int = WAIT_S, lock_dir: str = LOCK_DIR,
                 held_status: int = 0) -> str:
    """The shell text that takes the lock and leaves the watcher holding it.

    Prints ``ACQUIRED``, ``NOSESSION`` (taken and released again: no sshd above it), or ``HELD``
    followed by the holder's record, and exits ``held_status`` (:attr:`DeployLock.HELD_STATUS` when
    it leads the prefetch's reads: they do not run). ``lock_dir`` exists for tests.

    >>> "flock -w 5 9;" in lock_command({"holder": "sre@ctl"})
    True
    """
    holder = shlex.quote(json.dumps(record, sort_keys=True))
    lock, held_by = shlex.quote(f"{lock_dir}/deploy.lock"), shlex.quote(f"{lock_dir}/deploy.holder")
    return "\n".join([
        f"install -d -m 0755 {shlex.quote(lock_dir)} || exit 1",
        f"exec 9>>{lock} || exit 1",
        # flock exits 1 when the wait ran out; anything else (no flock, a bad descriptor) is an error.
        f"flock -w {int(wait_s)} 9; rc=$?",
        f"if [ $rc -eq 1 ]; then echo HELD; cat {held_by} 2>/dev/null; exit {int(held_status)}; fi",
        "if [ $rc -ne 0 ]; then echo \"flock failed (exit $rc)\" >&2; exit 1; fi",
        # The nearest sshd ancestor is this connection's session process (sshd-session on
        # OpenSSH >= 9.8); above it is the listening daemon, which never exits.
        # Read with the shell's own `read` (no process per step): comm, then stat's fourth field, the
        # parent, after the ") " that ends the process name.
        "p=$PPID",
        "while [ \"${p:-1}\" -gt 1 ]; do",
        "  comm=; read -r comm 2>/dev/null </proc/$p/comm",
        "  case \"$comm\" in sshd*) break;; esac",
        "  stat=; read -r stat 2>/dev/null </proc/$p/stat; stat=${stat##*\") \"}",
        "  set -- $stat; p=${2:-1}",
        "  case $p in ''|*[!0-9]*) p=1;; esac",  # not a process id: no sshd found, never a bad test
        "done",
        "if [ \"${p:-1}\" -le 1 ]; then echo NOSESSION; exit 0; fi",
        f"printf '%s\\n' {holder} > {held_by}.$$ && mv -f {held_by}.$$ {held_by}",
        # fd 9 is inherited: the lock lives as long as the watcher, the watcher as long as the session.
        # GNU tail checks the session every 0.1 s in its own process (no process started per check):
        # a run that follows at once (a rollout's next step, a bench) waits ~0.1 s, not up to 0.5 s.
        # A tail without --pid (busybox) falls back to polling, so the lock is never let go early.
        "setsid sh -c 'tail --pid=\"$1\" -s 0.1 -f /dev/null 2>/dev/null || "
        "while kill -0 \"$1\" 2>/dev/null; do sleep 0.5; done' gpufleet-deploy-lock \"$p\" "
        "</dev/null >/dev/null 2>&1 &",
        "echo ACQUIRED",
    ])


def parse_answer(host_name: str, lines: list[str]) -> str:
    """``"acquired"`` or ``"no-session"``; raise :class:`DeployLockHeld` naming the holder.

    >>> parse_answer("gpu-node-1", ["ACQUIRED"])
    'acquired'
    """
    text = [line.strip() for line in lines if line.strip()]
    if text and text[-1] == "ACQUIRED":
        return "acquired"
    if text and text[-1] == "NOSESSION":
        return "no-session"
    if text and text[0] == "HELD":
        try:
            held = json.loads(text[1])
            who = (f"{held.get('holder')} (pid {held.get('pid')}, {held.get('what')}) since {held.get('since')}")
        except (IndexError, ValueError, AttributeError):
            who = "a run that left no readable record"
        raise DeployLockHeld(
            f"{host_name}: another run of deploy.py holds this host ({LOCK_FILE}): {who}. It is released when "
            f"that run ends (its SSH connection closes); wait for it and run again")
    raise OperationError(f"{host_name}: could not take the deploy lock {LOCK_FILE}: {' '.join(text)[-300:]!r}")


def take_deploy_lock(what: str = "pyinfra deploy", wait_s: int = WAIT_S) -> str:
    """Take this host's deploy lock for the rest of the run, or refuse the host.

    Call it first in deploy.py, before any fact is read (pyinfra's Prepare stage, once per host).
    Returns ``"acquired"`` or ``"no-session"``. gpufleet's deploy.py takes it as the first part of
    the fact prefetch's round trip instead (:class:`DeployLock`, operations/base_role.py).

    **Example** (deploy.py):

    .. code:: python

        from operations.deploy_lock import take_deploy_lock
        take_deploy_lock("pyinfra deploy" if not settings.rollout_id else f"rollout {settings.rollout_id}")
    """
    return hold(state, host, what, wait_s)


def hold(run_state, target, what: str, wait_s: int = WAIT_S) -> str:
    """:func:`take_deploy_lock` for an explicit pyinfra state and host (after a reboot, the new
    connection takes the lock again: the reboot ended the watcher that held it)."""
    return DeployLock(run_state, target, what, wait_s).take()


class DeployLock:
    """One run's deploy lock on one host: taken by a command of its own (:meth:`take`), or leading
    the fact prefetch's one command (operations/fact_prefetch.py, ``prefetch_facts(first=...)``),
    which saves every run a round trip per host. Led, the lock is taken exactly as alone, in a
    subshell of that command, and the reads after it run only once it is held (the command's exit
    status 0: ``ACQUIRED``, or ``NOSESSION`` with the same warning as alone). Reads ahead from the
    control host (the Milvus users check), which start beside that command, run no command on the
    host until the lock has answered (operations/fact_prefetch.py).

    **Example** (operations/base_role.py):

    .. code:: python

        prefetch_facts(first=DeployLock(state, host, "pyinfra deploy", wait_s=5))
        # raises DeployLockHeld, naming the holder, before any fact is read or any operation planned
    """

    HELD_STATUS = 3  # the led lock command's exit status when another run holds the host

    def __init__(self, run_state, target, what: str, wait_s: int = WAIT_S):
        self.target, self.wait_s = target, wait_s
        self.record = holder_record(what)
        self.over_ssh = isinstance(target.connector, SSHConnector)
        # The run's privileges (SUDO=True in config.py...), as pyinfra applies them to a fact's command.
        self.global_kwargs, _ = pop_global_arguments(run_state, target, {})

    def lead_command(self) -> str | None:
        """The lock's shell text to lead another command with; None where it cannot lead (no SSH)."""
        return lock_command(self.record, self.wait_s, held_status=self.HELD_STATUS) if self.over_ssh else None

    def answer(self, lines: list[str], exit_code: int | None) -> str:
        """Read the led command's answer (its stdout and stderr; ``exit_code`` None: it never
        finished) as :meth:`take` does: ``"acquired"`` or ``"no-session"``, else raise."""
        if exit_code is None or exit_code not in (0, self.HELD_STATUS):
            raise self._failed("no answer" if exit_code is None else f"exit {exit_code}", lines)
        return self._accepted(parse_answer(self.target.name, lines))

    def take(self) -> str:
        """Take the lock with a command of its own; ``"acquired"`` or ``"no-session"``."""
        if not self.over_ssh:
            # @local's or @docker's commands may still have an sshd above them (an operator logged in
            # to the control host): tying the lock to that login would hold it for hours.
            logger.warning("%s: no SSH session to tie the deploy lock to (connector %s): running without it",
                           self.target.name, type(self.target.connector).__name__)
            return "no-session"
        connector_kwargs = {k: v for k, v in self.global_kwargs.items() if k in CONNECTOR_ARGUMENT_KEYS}
        connector_kwargs["_timeout"] = self.wait_s + 25
        command = StringCommand(lock_command(self.record, self.wait_s))
        ok, output = self.target.run_shell_command(command, **connector_kwargs)
        if not ok:
            raise self._failed("the command failed", [*output.stdout_lines, *output.stderr_lines])
        return self._accepted(parse_answer(self.target.name, list(output.stdout_lines)))

    def _failed(self, why: str, lines: list[str]) -> OperationError:
        said = " ".join(lines)[-300:] or "nothing"
        return OperationError(f"{self.target.name}: could not take the deploy lock {LOCK_FILE} ({why}): {said!r}")

    def _accepted(self, answer: str) -> str:
        if answer == "no-session":
            logger.warning("%s: no SSH session to tie the deploy lock to: running without it", self.target.name)
        return answer
