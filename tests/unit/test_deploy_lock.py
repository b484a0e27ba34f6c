"""The deploy lock's shell (operations/deploy_lock.py) run for real: flock, /proc, a watcher process.

An SSH session is played by a process whose name is ``sshd-session`` (what OpenSSH >= 9.8 calls
a connection's session process; ``sshd`` before): the lock command runs as its child, as it does
under pyinfra over SSH, and the "connection" closes when that process exits. The lab test
(tests/lab/test_deploy.py) does the same over a real sshd with the pyinfra CLI.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time

import pytest
from pyinfra.api import OperationError

from gpufleet import PROJECT_ROOT
from operations.deploy_lock import DeployLock, DeployLockHeld, lock_command, parse_answer
from operations.read_lanes import concurrent_reads

SESSION = r"""
import ctypes, subprocess, sys
ctypes.CDLL(None).prctl(15, b"sshd-session", 0, 0, 0)  # PR_SET_NAME: this process's comm
run = subprocess.run(["sh", "-c", sys.argv[1]], capture_output=True, text=True)
print(run.stdout, end="", flush=True)
print("END", flush=True)
sys.stdin.read()  # the connection stays open until the test closes stdin
"""


class Session:
    """A stand-in SSH session that ran the lock command and stays open until closed."""

    def __init__(self, command: str):
        self.proc = subprocess.Popen([sys.executable, "-c", SESSION, command], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        for line in self.proc.stdout:
            if line.strip() == "END":
                break
            self.lines.append(line.rstrip("\n"))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


@pytest.fixture
def lock_dir(tmp_path):
    return str(tmp_path / "gpufleet")


def test_the_lock_is_held_while_the_session_lives_and_free_soon_after_it_closes(lock_dir):
    first = Session(lock_command({"holder": "sre@ctl-1", "pid": 11, "what": "pyinfra deploy", "since": "T1"},
                                 wait_s=1, lock_dir=lock_dir))
    try:
        assert first.lines == ["ACQUIRED"]
        assert json.loads(open(f"{lock_dir}/deploy.holder").read())["holder"] == "sre@ctl-1"
        second = Session(lock_command({"holder": "ops@ctl-2"}, wait_s=1, lock_dir=lock_dir))
        second.close()
        assert second.lines[0] == "HELD"
        with pytest.raises(DeployLockHeld, match=r"gpu-node-1: another run of deploy.py holds this host .*"
                                                 r"sre@ctl-1 \(pid 11, pyinfra deploy\) since T1"):
            parse_answer("gpu-node-1", second.lines)
    finally:
        first.close()
    started = time.monotonic()
    third = Session(lock_command({"holder": "ops@ctl-2"}, wait_s=5, lock_dir=lock_dir))
    third.close()
    assert third.lines == ["ACQUIRED"], "the watcher did not let go after its session closed"
    assert time.monotonic() - started < 4


def test_without_an_sshd_above_it_no_lock_is_left_behind(lock_dir):
    alone = subprocess.run(["sh", "-c", lock_command({"holder": "x"}, wait_s=1, lock_dir=lock_dir)],
                           capture_output=True, text=True, timeout=30)
    assert alone.stdout.split() == ["NOSESSION"]
    again = Session(lock_command({"holder": "y"}, wait_s=1, lock_dir=lock_dir))
    again.close()
    assert again.lines == ["ACQUIRED"]


def test_an_unreadable_holder_record_is_still_a_refusal_and_garbage_is_an_error():
    with pytest.raises(DeployLockHeld, match="a run that left no readable record"):
        parse_answer("lb-1", ["HELD", "{not json"])
    with pytest.raises(OperationError, match="could not take the deploy lock"):
        parse_answer("lb-1", ["flock: command not found"])


def test_deploy_py_takes_the_lock_before_any_fact_is_read():
    """The lock is deploy.py's first call on the host (operations/base_role.every_host_first, whose
    first step it is): before the fact prefetch and every operation."""
    tree = ast.parse((PROJECT_ROOT / "deploy.py").read_text())
    calls = [node.value.func for node in tree.body
             if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)]
    names = [c.id if isinstance(c, ast.Name) else f"{ast.unparse(c)}" for c in calls]
    assert names[:1] == ["every_host_first"], names[:4]
    fact_reads = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "get_fact"]
    lock_line = next(c.lineno for c in calls if isinstance(c, ast.Name) and c.id == "every_host_first")
    assert all(n.lineno > lock_line for n in fact_reads)
    base = ast.parse((PROJECT_ROOT / "operations" / "base_role.py").read_text())
    first = next(n for n in base.body if isinstance(n, ast.FunctionDef) and n.name == "every_host_first")
    calls = [n.value for n in first.body if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)]
    assert [ast.unparse(c.func) for c in calls][:1] == ["prefetch_facts"]
    # ... led by the lock: the prefetch runs it before any read (tests/unit/test_fact_prefetch.py)
    led_by = {k.arg: k.value for k in calls[0].keywords}.get("first")
    assert isinstance(led_by, ast.Call) and ast.unparse(led_by.func) == "DeployLock", ast.unparse(calls[0])
    assert not [n for n in ast.walk(first) if isinstance(n, ast.Attribute) and n.attr == "get_fact"]


def _led(lock_dir: str, holder: str, marks, wait_s: int = 1) -> str:
    """The prefetch's command led by the lock (as deploy.py sends it), with one read that leaves a mark."""
    from pyinfra.api import StringCommand

    lead = lock_command({"holder": holder}, wait_s=wait_s, lock_dir=lock_dir, held_status=DeployLock.HELD_STATUS)
    return concurrent_reads([StringCommand(f"touch {marks}/{holder}; echo read")], "__m", 4, lead=lead).get_raw_value()


def test_led_by_the_lock_the_reads_run_only_once_it_is_held(lock_dir, tmp_path):
    """The lock leading the prefetch's command (DeployLock): taken first, in a subshell, and held by
    its watcher after the command ends; while another run holds it, no read runs at all."""
    first = Session(_led(lock_dir, "ctl-1", tmp_path))
    try:
        assert first.lines == ["__m:lead", "ACQUIRED", "__m:lead-rc:0", "__m:0", "read", "__m:rc:0", "__m:lane:0:0"]
        assert (tmp_path / "ctl-1").exists()
        second = Session(_led(lock_dir, "ctl-2", tmp_path))
        second.close()
        assert second.lines[:2] == ["__m:lead", "HELD"] and second.lines[-1] == f"__m:lead-rc:{DeployLock.HELD_STATUS}"
        assert "__m:0" not in second.lines and not (tmp_path / "ctl-2").exists(), "a read ran without the lock"
    finally:
        first.close()
    third = Session(_led(lock_dir, "ctl-3", tmp_path, wait_s=5))
    third.close()
    assert third.lines[:4] == ["__m:lead", "ACQUIRED", "__m:lead-rc:0", "__m:0"], third.lines
    assert (tmp_path / "ctl-3").exists()


def test_the_lock_finds_the_session_above_shells_between_them(lock_dir):
    """pyinfra's command runs in a shell under the user's login shell under sshd: the lock walks up
    /proc to the session, whatever number of shells lie between (a walk that stopped short would
    answer NOSESSION and take no lock)."""
    import shlex

    command = lock_command({"holder": "sre@ctl-1"}, wait_s=1, lock_dir=lock_dir)
    first = Session(f"bash -c {shlex.quote(f'sh -c {shlex.quote(command)}')}")
    try:
        assert first.lines == ["ACQUIRED"]
        second = Session(lock_command({"holder": "ops@ctl-2"}, wait_s=1, lock_dir=lock_dir))
        second.close()
        assert second.lines[0] == "HELD"
    finally:
        first.close()


def test_a_read_that_does_not_parse_fails_the_reads_not_the_lock(lock_dir, tmp_path):
    """The shell runs the lead's line before it parses the reads: a read whose text does not parse
    leaves the lock taken and answered, and only the reads fail (they are then read one by one)."""
    from pyinfra.api import StringCommand

    lead = lock_command({"holder": "x"}, wait_s=1, lock_dir=lock_dir, held_status=DeployLock.HELD_STATUS)
    text = concurrent_reads([StringCommand("echo 'unbalanced")], "__m", 4, lead=lead).get_raw_value()
    session = Session(text)
    session.close()
    assert session.lines[:3] == ["__m:lead", "ACQUIRED", "__m:lead-rc:0"]


def test_a_led_lock_answers_as_alone_and_says_why_it_failed():
    class Target:
        name, connector = "gpu-node-1", object()

    lock = DeployLock.__new__(DeployLock)
    lock.target, lock.wait_s, lock.over_ssh = Target(), 5, True
    assert lock.answer(["ACQUIRED"], 0) == "acquired"
    with pytest.raises(DeployLockHeld, match="sre@ctl-1"):
        lock.answer(["HELD", json.dumps({"holder": "sre@ctl-1"})], DeployLock.HELD_STATUS)
    with pytest.raises(OperationError, match=r"could not take the deploy lock .*\(exit 1\): 'flock failed"):
        lock.answer(["flock failed (exit 64)"], 1)
    with pytest.raises(OperationError, match=r"\(exit 137\): 'nothing'"):
        lock.answer([], 137)  # killed before it said anything
    with pytest.raises(OperationError, match=r"\(no answer\): 'Connection reset'"):
        lock.answer(["Connection reset"], None)  # the command never finished
