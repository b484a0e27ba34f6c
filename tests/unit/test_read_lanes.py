"""operations/read_lanes.py: the prefetch's lanes, each under one time limit, run by /bin/sh here.

A read in a lane has no ``timeout`` of its own; a hung one is still killed at its limit, answered as
timed out (never read again), and the reads its lane never ran are left to pyinfra."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
from pyinfra.api import StringCommand
from pyinfra.api.exceptions import PyinfraError
from pyinfra.facts.server import Command

from operations import fact_prefetch, read_lanes
from operations.facts.util import ReadTimedOut, envelope, wrap
from tests.unit.test_fact_prefetch import _count_commands, _remember, preparing  # noqa: F401


def _tool(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _run(command: StringCommand, bin_dir: Path) -> list[str]:
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run(["/bin/sh", "-c", command.get_raw_value()], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.fixture
def bin_dir(tmp_path):
    path = tmp_path / "bin"
    path.mkdir()
    return path


def test_a_lane_starts_one_timeout_for_all_its_reads(bin_dir, tmp_path):
    """Two process starts per read were the time limit's: in a lane there is one for the lane."""
    log = tmp_path / "timeouts"
    _tool(bin_dir, "timeout", f'echo x >> {log}\nexec /usr/bin/timeout "$@"\n')
    _tool(bin_dir, "gpu-tool", "echo ok\n")
    reads = [StringCommand(wrap("gpu-tool", "gpu-tool")) for _ in range(3)]
    out = read_lanes.read_output(_run(read_lanes.concurrent_reads(reads, "__m", 1), bin_dir), "__m")
    assert out.answers(reads, 1) == {i: (0, ["ok", "__gpufleet_rc=0"]) for i in range(3)}
    assert log.read_text().count("x") == 1
    # The same read alone (pyinfra's own, after the prefetch) keeps its own limit.
    log.unlink()
    assert _run(reads[0], bin_dir) == ["ok", "__gpufleet_rc=0"] and log.read_text().count("x") == 1


def test_a_hung_read_kills_its_lane_at_the_limit_and_reads_as_timed_out(bin_dir, monkeypatch):
    monkeypatch.setattr(read_lanes, "LANE_LIMIT_S", 1)
    _tool(bin_dir, "hung-tool", "echo starting; exec sleep 30\n")
    _tool(bin_dir, "fine-tool", "echo fine\n")
    reads = [StringCommand(wrap("fine-tool", "fine-tool", limit=1)),  # lane 0, before the hung one
             StringCommand(wrap("fine-tool", "fine-tool", limit=1)),  # lane 1
             StringCommand(wrap("hung-tool", "hung-tool", limit=1)),  # lane 0
             StringCommand(wrap("fine-tool", "fine-tool", limit=1)),  # lane 1
             StringCommand(wrap("fine-tool", "fine-tool", limit=1)),  # lane 0, after it: never runs
             StringCommand("echo", "unlimited")]  # lane 1: a read with no limit of its own
    started = time.monotonic()
    out = read_lanes.read_output(_run(read_lanes.concurrent_reads(reads, "__m", 2), bin_dir), "__m")
    assert time.monotonic() - started < 15  # killed at 1 s (KILL 5 s later at the latest)
    assert out.lane_status == {0: 124, 1: 0}
    answers = out.answers(reads, 2)
    assert sorted(answers) == [0, 1, 2, 3, 5]  # 4 never ran: pyinfra reads it
    assert answers[2] == (0, ["starting", "__gpufleet_timeout=1", "__gpufleet_rc=124"])
    with pytest.raises(ReadTimedOut, match=r"no answer within 1 s"):
        envelope(answers[2][1])
    assert answers[0] == answers[3] == (0, ["fine", "__gpufleet_rc=0"]) and answers[5] == (0, ["unlimited"])


def test_a_cut_off_read_without_a_limit_of_its_own_has_no_answer(bin_dir, monkeypatch):
    """pyinfra's facts know no timeout marker: one the lane's limit cut off is pyinfra's to read."""
    monkeypatch.setattr(read_lanes, "LANE_LIMIT_S", 1)
    reads = [StringCommand("echo", "half;", "sleep", "30")]
    out = read_lanes.read_output(_run(read_lanes.concurrent_reads(reads, "__m", 1), bin_dir), "__m")
    assert out.cut_off == {0: ["half"]} and out.lane_status == {0: 124}
    assert out.answers(reads, 1) == {}


def test_a_read_with_a_longer_limit_of_its_own_is_not_cut_by_a_lane(bin_dir, monkeypatch):
    """VllmNcclVersions may take 240 s (a docker exec importing torch): not the lanes' 60."""
    monkeypatch.setattr(read_lanes, "LANE_LIMIT_S", 1)
    _tool(bin_dir, "slow-tool", "sleep 2; echo done\n")
    reads = [StringCommand(wrap("slow-tool", "slow-tool", limit=20)), StringCommand("echo", "x")]
    assert read_lanes.lane_members(reads, 4) == ([[1]], [0])
    out = read_lanes.read_output(_run(read_lanes.concurrent_reads(reads, "__m", 4), bin_dir), "__m")
    assert out.answers(reads, 4) == {0: (0, ["done", "__gpufleet_rc=0"]), 1: (0, ["x"])}


def test_in_a_prefetch_the_hung_read_fails_the_host_once_and_the_one_after_it_is_read_alone(
        preparing, monkeypatch, tmp_path):  # noqa: F811
    state, host = preparing
    monkeypatch.setattr(read_lanes, "LANE_LIMIT_S", 1)
    monkeypatch.setattr(fact_prefetch, "READ_LANES", 1)
    hung = tmp_path / "hung-tool"
    hung.write_text("#!/bin/sh\nexec sleep 30\n")
    hung.chmod(0o755)

    class HungRead(Command):  # a gpufleet read: its own limit, its envelope
        def command(self, command):
            return wrap(str(hung), str(hung), limit=1)

        def process(self, output):
            envelope(output)
            return output

    HungRead.__module__, HungRead.__qualname__ = __name__, "HungRead"
    globals()["HungRead"] = HungRead
    _remember(host, (HungRead, {"command": "hung"}, None), (Command, {"command": "echo after"}, None))
    runs = _count_commands(host, monkeypatch)

    assert fact_prefetch.prefetch_facts() == 1  # the hung read, answered as timed out
    assert host.get_fact(Command, command="echo after") == "after"  # never ran in its lane: pyinfra's own read
    assert len(runs) == 2
    # The hung read fails the host (its only one: pyinfra stops the run), without a second wait.
    with pytest.raises(PyinfraError, match="No hosts remaining"):
        host.get_fact(HungRead, command="hung")
    assert len(runs) == 2 and host in state.failed_hosts


def test_a_lane_that_does_not_parse_fails_only_its_own_reads(bin_dir):
    reads = [StringCommand("echo 'unbalanced"), StringCommand("echo", "fine")]
    out = read_lanes.read_output(_run(read_lanes.concurrent_reads(reads, "__m", 2), bin_dir), "__m")
    assert out.answers(reads, 2) == {1: (0, ["fine"])} and out.lane_status[0] == 2

