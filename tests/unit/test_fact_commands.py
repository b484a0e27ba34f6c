"""The new facts' and the image check's shell, run for real by /bin/sh (dash, as on Debian hosts).

Where the tool itself cannot run here (no GPU, no Docker for unit tests), a small stand-in on the
PATH prints what the real tool prints (the messages below are the real tools' own, captured on
Debian 12: dmesg as an unprivileged user, journalctl with no readable journal) and logs its
arguments, so that the test sees what our command asked.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from pyinfra.api.exceptions import FactProcessError

from operations.facts.apt import AptCandidates, KeyringFingerprints, PackageStates
from operations.facts.edge import ServiceState
from operations.facts.gpu_health import GpuHealth
from operations.facts.host_capacity import KernelHeaders
from operations.facts.kernel_log import KernelXids
from operations.facts.milvus import CredentialsGeneration
from operations.facts.util import ReadTimedOut, envelope, wrap, wrap_file
from operations.vllm import build_command, check_command

XID = "[ 8523.121244] NVRM: Xid (PCI:0000:01:00): 79, pid=2207, name=python3, GPU has fallen off the bus."


def tool(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def run(command: str, bin_dir: Path, timeout: float = 30) -> list[str]:
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, env=env, timeout=timeout)
    assert done.returncode == 0, done.stderr  # fact commands always exit 0
    return done.stdout.splitlines()


# ------------------------------------------------------------------------------ time limits ------
def test_a_hung_tool_is_killed_and_its_read_fails_instead_of_answering(tmp_path):
    tool(tmp_path, "nvidia-smi", "echo 'starting'; exec sleep 30\n")
    started = time.monotonic()
    out = run(wrap("nvidia-smi", "nvidia-smi -q", limit=1), tmp_path)
    assert time.monotonic() - started < 10
    assert out == ["starting", "__gpufleet_timeout=1", "__gpufleet_rc=124"]
    # Never "no GPUs" or "driver not loaded": pyinfra fails the host on this error.
    with pytest.raises(FactProcessError, match=r"^no answer within 1 s \(killed on the host\)$"):
        envelope(out)


def test_a_tool_that_ignores_term_is_killed_too(tmp_path):
    tool(tmp_path, "nvidia-smi", "trap '' TERM; sleep 30\n")
    started = time.monotonic()
    out = run(wrap("nvidia-smi", "nvidia-smi -q", limit=1), tmp_path)
    assert "__gpufleet_timeout=1" in out and time.monotonic() - started < 15  # no straggler held the output


def test_a_multi_step_fact_that_hangs_fails_instead_of_reading_as_not_installed(tmp_path):
    tool(tmp_path, "dpkg-query", "exec sleep 30\n")
    command = PackageStates().command(["libnccl2"]).replace("timeout -k 5 60", "timeout -k 5 1")  # a 1 s limit
    out = run(command, tmp_path)
    with pytest.raises(FactProcessError, match="no answer within 60 s"):
        PackageStates().process(out)  # (the marker still names the 60 s of the real command)


def test_an_answer_only_read_that_hangs_fails_with_the_same_error_as_a_tool_read(tmp_path):
    """systemctl waiting on a wedged PID 1: never "inactive" or "not enabled"."""
    tool(tmp_path, "systemctl", "exec sleep 30\n")
    started = time.monotonic()
    out = run(ServiceState().command("docker").replace("timeout -k 5 60", "timeout -k 5 1"), tmp_path)
    assert time.monotonic() - started < 10
    assert out[-2:] == ["__gpufleet_timeout=60", "__gpufleet_rc=124"]
    with pytest.raises(ReadTimedOut, match=r"^no answer within 60 s \(killed on the host\)$"):
        ServiceState().process(out)


def _only(bin_dir: Path, *names: str) -> Path:
    """`bin_dir` holding the shell and coreutils a read needs, and none of the tools it asks."""
    import shutil

    bin_dir.mkdir(exist_ok=True)
    for name in ("sh", "timeout", "cat", "sed", "awk", *names):
        if not (bin_dir / name).exists():
            (bin_dir / name).symlink_to(shutil.which(name))
    return bin_dir


def run_only(command: str, bin_dir: Path) -> list[str]:
    done = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, env={"PATH": str(bin_dir)},
                          timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_answer_only_reads_whose_tool_is_missing_answer_as_before(tmp_path):
    bin_dir = _only(tmp_path / "bin")
    assert ServiceState().process(run_only(ServiceState().command("docker"), bin_dir)) == ServiceState.default()
    assert AptCandidates().process(run_only(AptCandidates().command(["nginx"]), bin_dir)) == {}
    assert PackageStates().process(run_only(PackageStates().command(["libnccl2"]), bin_dir)) == {}
    keyring = tmp_path / "key.gpg"
    keyring.write_text("not a key")
    assert KeyringFingerprints().process(run_only(KeyringFingerprints().command(str(keyring)), bin_dir)) == []


def test_an_answer_only_read_that_exits_non_zero_is_still_an_answer(tmp_path):
    # dpkg-query exits 1 when one package is unknown, and still prints the others: a held one not
    # installed ("hn"), a held installed one ("hi"), one installed and not held ("ii").
    bin_dir = _only(tmp_path / "bin")
    tool(bin_dir, "dpkg-query", "printf 'pkg\\tlibnccl-dev\\t\\thn \\npkg\\tlibnccl2\\t2.27.7-1+cuda12.9\\thi \\n"
                                "pkg\\tjq\\t1.6-2.1\\tii \\n'; echo 'dpkg-query: no packages found matching nope' >&2; exit 1\n")
    tool(bin_dir, "apt-mark", "echo apt-mark is not asked >&2; exit 99\n")
    out = run_only(PackageStates().command(["libnccl2", "libnccl-dev", "jq", "nope"]), bin_dir)
    assert PackageStates().process(out) == {"libnccl-dev": {"version": None, "held": True},
                                            "libnccl2": {"version": "2.27.7-1+cuda12.9", "held": True},
                                            "jq": {"version": "1.6-2.1", "held": False}}
    # apt-cache policy of a package no archive knows prints nothing: an answer, not a failure.
    tool(bin_dir, "apt-cache", "exit 0\n")
    assert AptCandidates().process(run_only(AptCandidates().command(["no-such-package"]), bin_dir)) == {}


def test_a_strict_read_that_exits_non_zero_fails_and_one_that_answers_does_not(tmp_path):
    env_file = tmp_path / "minio.env"
    env_file.write_text("# gpufleet-generation 3\nMINIO_ROOT_PASSWORD=x\n")
    bin_dir = _only(tmp_path / "bin")
    assert CredentialsGeneration().process(run_only(CredentialsGeneration().command(str(env_file)), bin_dir)) == 3
    absent = run_only(CredentialsGeneration().command(str(tmp_path / "none")), bin_dir)
    assert absent == ["__gpufleet_rc=0"] and CredentialsGeneration().process(absent) is None
    (bin_dir / "sed").unlink()
    tool(bin_dir, "sed", "echo 'sed: cannot read minio.env: Permission denied' >&2; exit 2\n")
    with pytest.raises(FactProcessError, match=r"^the read failed \(exit 2\)"):
        CredentialsGeneration().process(run_only(CredentialsGeneration().command(str(env_file)), bin_dir))


def test_a_tool_that_fails_quickly_is_a_failure_not_a_timeout(tmp_path):
    tool(tmp_path, "nvidia-smi", "echo 'NVIDIA-SMI has failed because it couldn'\"'\"'t communicate with the "
                                 "NVIDIA driver.'; exit 9\n")
    health = GpuHealth().process(run(GpuHealth.command, tmp_path))
    assert health["status"] == "failed" and health["exit_code"] == 9 and "couldn't communicate" in health["error"]


def test_a_file_without_a_final_newline_keeps_the_marker_line(tmp_path):
    path = tmp_path / "version"
    path.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05")
    out = run(wrap_file(str(path)), tmp_path)
    assert out[-1] == "__gpufleet_rc=0" and out[0].endswith("580.95.05")
    assert run(wrap_file(str(tmp_path / "none")), tmp_path) == ["__gpufleet_missing"]


# ------------------------------------------------------------------------------ kernel log -------
DMESG_DENIED = "echo 'dmesg: read kernel buffer failed: Operation not permitted' >&2; exit 1\n"


def test_xid_events_are_counted_from_dmesg(tmp_path):
    tool(tmp_path, "dmesg", f"echo '[    0.000000] Linux version 6.8.0-49-generic'; echo '{XID}'\n")
    found = KernelXids().process(run(KernelXids.command, tmp_path))
    assert found["readable"] and found["source"] == "dmesg" and found["count"] == 1
    assert found["events"][0]["code"] == 79 and found["events"][0]["t"] == 8523.121244


def test_an_unreadable_kernel_log_is_unreadable_not_zero(tmp_path):
    tool(tmp_path, "dmesg", DMESG_DENIED)
    # journalctl as a user who may not read the journal: exit status 0, and no kernel line.
    tool(tmp_path, "journalctl", "echo 'No journal files were found.'; echo '-- No entries --'\n")
    found = KernelXids().process(run(KernelXids.command, tmp_path))
    assert found["readable"] is False and found["count"] is None
    assert "Operation not permitted" in found["error"] and "No journal files were found." in found["error"]


def test_the_journal_is_read_when_dmesg_is_refused(tmp_path):
    tool(tmp_path, "dmesg", DMESG_DENIED)
    tool(tmp_path, "journalctl", f"echo '[    0.000000] gpu-node-2 kernel: Linux version 6.8.0'; "
                                 f"echo '[ 8523.121244] gpu-node-2 kernel: {XID[15:]}'\n")
    found = KernelXids().process(run(KernelXids.command, tmp_path))
    assert found["source"] == "journalctl" and found["count"] == 1 and found["events"][0]["t"] == 8523.121244


def test_an_xid_storm_is_counted_whole_and_its_last_lines_kept(tmp_path):
    tool(tmp_path, "dmesg", "i=1; while [ $i -le 60 ]; do echo \"[ $i.000000] NVRM: Xid (PCI:0000:01:00): 119, "
                            "pid=1, Timeout waiting for RPC from GSP\"; i=$((i + 1)); done\n")
    found = KernelXids().process(run(KernelXids.command, tmp_path))
    assert found["count"] == 60 and len(found["events"]) == 50
    assert [e["t"] for e in found["events"]][:2] == [11.0, 12.0] and found["events"][-1]["t"] == 60.0


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/su").exists(), reason="needs root to run as nobody")
def test_the_real_kernel_log_as_root_and_as_an_unprivileged_user():
    as_root = KernelXids().process(subprocess.run(["sh", "-c", KernelXids.command], capture_output=True,
                                                  text=True).stdout.splitlines())
    assert as_root["readable"] and isinstance(as_root["count"], int)
    restricted = Path("/proc/sys/kernel/dmesg_restrict").read_text().strip() == "1"
    as_nobody = KernelXids().process(subprocess.run(["su", "nobody", "-s", "/bin/sh", "-c", KernelXids.command],
                                                    capture_output=True, text=True).stdout.splitlines())
    if restricted:  # what `grep -c` used to call "0 XID events"
        assert as_nobody["readable"] is False and as_nobody["count"] is None, as_nobody


# ------------------------------------------------------------------- the vLLM image check --------
DOCKER = """log="$GPUFLEET_TEST_LOG"; echo "$*" >> "$log"
case "$1 $2" in
  "image inspect") case "$*" in
      *RootFS*) case "$*" in *rtx5090*) echo '{"id":"sha256:9a9a","labels":{"io.gpufleet.base-id":"sha256:5151"},"digests":null,"layers":["l1","l2","l3"]}' ;;
                            *) echo '{"id":"sha256:5151","labels":null,"digests":["vllm/vllm-openai@sha256:e1d0"],"layers":["l1","l2"]}' ;; esac ;;
      *RepoDigests*) echo 'vllm/vllm-openai@sha256:e1d0' ;;
      *rtx5090*) echo 'sha256:9a9a' ;;
      *) echo 'sha256:5151' ;; esac ;;
  "run --rm") [ -n "$GPUFLEET_TEST_FAIL" ] && { echo '{"nccl_version": "2.26.2", "problems": ["NCCL 2.26.2, pinned 2.27.7"]}'; exit 1; }
      echo '{"nccl_version": "2.27.7", "problems": []}' ;;
  "image rm") ;;
  "build "*) ;;
esac
"""


@pytest.fixture
def docker(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool(bin_dir, "docker", DOCKER)
    monkeypatch.setenv("GPUFLEET_TEST_LOG", str(tmp_path / "docker.log"))
    return bin_dir, tmp_path / "docker.log"


def test_a_passed_check_writes_the_marker_under_the_image_id(docker, tmp_path):
    bin_dir, log = docker
    checked = tmp_path / "checked"
    run(check_command("gpufleet/vllm-rtx5090:6e73", "2.27.7", "sm_120", checked_dir=str(checked)) + "; true", bin_dir)
    marker = checked / "9a9a.json"
    assert json.loads(marker.read_text())["nccl_version"] == "2.27.7"
    assert list(checked.iterdir()) == [marker]  # no temporary file left


def test_a_failed_check_writes_no_marker_and_removes_the_image(docker, tmp_path, monkeypatch):
    bin_dir, log = docker
    monkeypatch.setenv("GPUFLEET_TEST_FAIL", "1")
    checked = tmp_path / "checked"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run(["/bin/sh", "-c", check_command("gpufleet/vllm-rtx5090:6e73", "2.27.7", "sm_120",
                                                          checked_dir=str(checked))],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 1 and "failed its NCCL/architecture check" in done.stderr
    assert not checked.exists() or list(checked.iterdir()) == []
    assert "image rm gpufleet/vllm-rtx5090:6e73" in log.read_text()


def test_the_build_labels_the_upstream_image_it_starts_from(docker):
    bin_dir, log = docker
    run(build_command("gpufleet/vllm-rtx5090:6e73", "vllm/vllm-openai:v0.21.0", "2.27.7", "", "6e73") + "; true",
        bin_dir)
    build = next(line for line in log.read_text().splitlines() if line.startswith("build "))
    assert "--label io.gpufleet.base-id=sha256:5151" in build
    assert "--label io.gpufleet.base-digests=vllm/vllm-openai@sha256:e1d0" in build
    assert "pull" not in log.read_text()  # the base was on the node: nothing pulled


def test_a_read_killed_mid_line_is_no_answer(tmp_path):
    """dpkg-query hangs after half a line (stdio writes to a pipe in blocks): the timeout marker
    lands on that line, and the read still raises instead of answering without libnccl2."""
    tool(tmp_path, "dpkg-query", "printf 'pkg\\tjq\\t1.6-2.1\\tii \\npkg\\tlibnccl2\\t2.27'; exec sleep 30\n")
    command = PackageStates().command(["jq", "libnccl2"]).replace("timeout -k 5 60", "timeout -k 5 1")
    out = run(command, tmp_path)
    assert any(line.startswith("pkg\tlibnccl2\t2.27__gpufleet_timeout=") for line in out)
    with pytest.raises(ReadTimedOut):
        PackageStates().process(out)


# ------------------------------------------------------------------------------ kernel headers ---
@pytest.mark.parametrize("status, asks_apt, expected", [
    ("ii ", False, {"installed": True, "candidate": None}),
    ("hi ", False, {"installed": True, "candidate": None}),  # held beside the driver
    ("un ", True, {"installed": False, "candidate": "6.1.115-1"}),
    ("", True, {"installed": False, "candidate": "6.1.115-1"}),
])
def test_kernel_headers_ask_apt_for_a_candidate_only_when_they_are_not_installed(tmp_path, status, asks_apt,
                                                                                   expected):
    """apt-cache policy loads apt's whole cache: a node with its headers installed (every deploy
    and drift of a provisioned node) is answered by dpkg alone."""
    log = tmp_path / "apt-cache.log"
    tool(tmp_path, "uname", "echo 6.1.0-27-amd64\n")
    tool(tmp_path, "dpkg-query", f"printf '%s' '{status}'; [ -n '{status}' ]\n")
    tool(tmp_path, "apt-cache", f"echo \"$*\" >> {log}\n"
                                "printf 'linux-headers-6.1.0-27-amd64:\\n  Installed: (none)\\n  Candidate: 6.1.115-1\\n'\n")
    out = KernelHeaders().process(run(KernelHeaders.command, tmp_path))
    assert {k: out[k] for k in ("status", "kernel", "installed", "candidate")} == {
        "status": "ok", "kernel": "6.1.0-27-amd64", **expected}
    assert log.exists() == asks_apt
    if asks_apt:
        assert log.read_text().split() == ["policy", "linux-headers-6.1.0-27-amd64"]
