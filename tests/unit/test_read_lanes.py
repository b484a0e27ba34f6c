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
from operations.facts.util import LANE_LIMITED, ReadTimedOut, envelope, wrap
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
    monkeypatch.setattr(read_lanes, "LANE_LIMIT_S", 3)
    _tool(bin_dir, "hung-tool", "echo starting; exec sleep 30\n")
    _tool(bin_dir, "fine-tool", "echo fine\n")
    reads = [StringCommand(wrap("fine-tool", "fine-tool", limit=3)),  # lane 0, before the hung one
             StringCommand(wrap("fine-tool", "fine-tool", limit=3)),  # lane 1
             StringCommand(wrap("hung-tool", "hung-tool", limit=3)),  # lane 0
             StringCommand(wrap("fine-tool", "fine-tool", limit=3)),  # lane 1
             StringCommand(wrap("fine-tool", "fine-tool", limit=3)),  # lane 0, after it: never runs
             StringCommand("echo", "unlimited")]  # lane 1: a read with no limit of its own
    started = time.monotonic()
    out = read_lanes.read_output(_run(read_lanes.concurrent_reads(reads, "__m", 2), bin_dir), "__m")
    assert time.monotonic() - started < 15  # killed at 3 s (KILL 5 s later at the latest)
    assert out.lane_status == {0: 124, 1: 0}
    answers = out.answers(reads, 2)
    assert sorted(answers) == [0, 1, 2, 3, 5]  # 4 never ran: pyinfra reads it
    assert answers[2] == (0, ["starting", "__gpufleet_timeout=3", "__gpufleet_rc=124"])
    with pytest.raises(ReadTimedOut, match=r"no answer within 3 s"):
        envelope(answers[2][1])
    assert answers[0] == answers[3] == (0, ["fine", "__gpufleet_rc=0"]) and answers[5] == (0, ["unlimited"])


def test_a_read_cut_off_because_the_reads_before_it_used_the_lane_up_is_not_taken_for_hung(bin_dir, monkeypatch):
    """A healthy read that only ran the lane's last second is pyinfra's to read again, under its own
    limit: never "timed out", which would fail the host."""
    monkeypatch.setattr(read_lanes, "LANE_LIMIT_S", 6)  # the host's clocks count whole seconds
    _tool(bin_dir, "slowish-tool", "sleep 2.2; echo ok\n")
    reads = [StringCommand(wrap("slowish-tool", "slowish-tool", limit=6)) for _ in range(3)]
    out = read_lanes.read_output(_run(read_lanes.concurrent_reads(reads, "__m", 1), bin_dir), "__m")
    assert out.lane_status == {0: 124} and len(out.cut_off) == 1  # the third, or the second on a slow machine
    assert out.answers(reads, 1) == out.finished  # none answered as timed out
    assert out.finished and all(answer == (0, ["ok", "__gpufleet_rc=0"]) for answer in out.finished.values())


def test_a_read_killed_mid_line_does_not_take_the_next_reads_answer(bin_dir, monkeypatch):
    """Its file ends without a newline; the next file's mark must not become part of its output."""
    monkeypatch.setattr(read_lanes, "LANE_LIMIT_S", 3)
    _tool(bin_dir, "partial-tool", "printf '{\"partial\": '; exec sleep 30\n")
    _tool(bin_dir, "fine-tool", "echo fine\n")
    reads = [StringCommand(wrap("partial-tool", "partial-tool", limit=3)),
             StringCommand(wrap("fine-tool", "fine-tool", limit=3))]
    out = read_lanes.read_output(_run(read_lanes.concurrent_reads(reads, "__m", 2), bin_dir), "__m")
    answers = out.answers(reads, 2)
    assert answers[1] == (0, ["fine", "__gpufleet_rc=0"])
    assert answers[0] == (0, ['{"partial": ', "__gpufleet_timeout=3", "__gpufleet_rc=124"])


def test_a_tool_that_ignores_term_is_killed_with_its_lane(bin_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(read_lanes, "LANE_LIMIT_S", 1)
    pid_file = tmp_path / "pid"
    _tool(bin_dir, "deaf-tool", f"trap '' TERM; echo $$ > {pid_file}; exec sleep 30\n")
    reads = [StringCommand(wrap("deaf-tool", "deaf-tool", limit=1))]
    out = read_lanes.read_output(_run(read_lanes.concurrent_reads(reads, "__m", 1), bin_dir), "__m")
    assert out.lane_status[0] in (124, 137)
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
        assert time.monotonic() < deadline, "the tool outlived its lane"
        time.sleep(0.1)


def test_a_read_in_a_lane_sees_no_arguments_as_under_its_own_sh(bin_dir):
    """docker_api's reads build their URL lists with `set -- "$@" …` and count them with $#."""
    reads = [StringCommand(wrap("sh", 'echo "$# [$*]"'))]
    out = read_lanes.read_output(_run(read_lanes.concurrent_reads(reads, "__m", 1), bin_dir), "__m")
    assert out.answers(reads, 1) == {0: (0, ["0 []", "__gpufleet_rc=0"])}
    assert _run(reads[0], bin_dir) == ["0 []", "__gpufleet_rc=0"]


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



# gpufleet's reads that run on any Debian host (no Docker, GPU or network needed): in a lane each
# prints what it prints under its own `timeout` and `sh -c`.
LOCAL_READS = [
    ("apt.PackageStates", {"packages": ["bash", "no-such-package-gpufleet"]}), ("apt.AptCandidates", {"packages": ["bash"]}),
    ("apt.KeyringFingerprints", {"path": "/nonexistent.gpg"}), ("apt.KernelFlavours", {}),
    ("host_capacity.KernelHeaders", {}), ("kernel.SecureBoot", {}), ("kernel.GpuKernelModules", {}),
    ("gpu.DriverRebootMarker", {"version": "580.95.05"}), ("gpu.NvidiaGpus", {}), ("gpu_health.GpuHealth", {}),
    ("net.ResolvedAddress", {"name_or_ip": "localhost"}), ("rollout.RolloutLock", {}), ("pci.NvidiaPciDevices", {}),
    ("weights.StagedArchives", {"models_dir": "/nonexistent"}), ("kernel_log.KernelXids", {}), ("edge.ServiceState", {"service": "ssh"}),
]


@pytest.mark.parametrize("name, kwargs", LOCAL_READS, ids=[name for name, _ in LOCAL_READS])
def test_real_reads_print_the_same_in_a_lane(name, kwargs, bin_dir):
    import importlib

    from pyinfra.api.facts import _make_command

    module, _, class_name = name.rpartition(".")
    cls = getattr(importlib.import_module(f"operations.facts.{module}"), class_name)
    command = _make_command(cls().command, dict(kwargs))
    assert "timeout -k" in command  # a read with its own limit, which the lane drops
    alone = _run(StringCommand(command), bin_dir)
    in_lane = _run(StringCommand(f"{LANE_LIMITED}=1;", command), bin_dir)
    assert in_lane == alone

    def value(output):  # what the plan sees: the fact's value, or the error it raises
        try:
            return cls().process(output)
        except Exception as exc:  # noqa: BLE001
            return type(exc).__name__, str(exc)

    assert value(in_lane) == value(alone)
