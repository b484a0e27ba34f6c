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
from operations.deploy_lock import DeployLockHeld, lock_command, parse_answer

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
    steps = [ast.unparse(n.value.func) for n in first.body if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)]
    assert steps[:2] == ["take_deploy_lock", "prefetch_facts"], steps
    assert not [n for n in ast.walk(first) if isinstance(n, ast.Attribute) and n.attr == "get_fact"]
