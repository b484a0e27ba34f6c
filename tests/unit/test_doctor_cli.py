"""`gpufleet doctor`: the reader's round trips on a fake host, and the command's exit codes and outputs.

At the CLI boundary the SSH read (gpufleet.doctor.runner.read_fleet) is replaced by evidence built
from tests/fixtures/doctor/; everything after it (the rules, the outputs, the exit code) is real.
"""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

from click.testing import CliRunner

from gpufleet.cli import main
from gpufleet.doctor import evidence as reader
from gpufleet.doctor import runner
from gpufleet.fleet import Fleet
from tests.unit.doctor_node import CONTAINER, HOST, LOGS, fleet_node, healthy_evidence, probe_lines, snapshot_lines, text


# ------------------------------------------------------------------------------- the reader -------
class FakeHost:
    """A connected pyinfra host that answers the two doctor scripts; records what it was asked."""

    def __init__(self, answers, sudo=True):
        self.answers = list(answers)
        self.data = {"_sudo": True} if sudo else {}
        self.calls: list[dict] = []

    def run_shell_command(self, command, **arguments):
        self.calls.append({"command": str(command), **arguments})
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        ok, lines = answer
        return ok, SimpleNamespace(combined_lines=[SimpleNamespace(line=line) for line in lines])


def test_reader_makes_two_round_trips_with_timeouts_and_sudo():
    host = FakeHost([(True, snapshot_lines()), (True, probe_lines())])
    ev = reader.read_node(host, fleet_node())
    assert [c["_timeout"] for c in host.calls] == [reader.SNAPSHOT_TIMEOUT, reader.PROBES_TIMEOUT]
    assert all(c["_sudo"] is True for c in host.calls)
    assert "__gpufleet_doctor=gpus" in host.calls[0]["command"]
    assert f"docker exec {CONTAINER} python3 /opt/gpufleet/vllm_nccl_check.py" in host.calls[1]["command"]
    assert ev["read"]["complete"] and [r["name"] for r in ev["read"]["round_trips"]] == ["snapshot", "container probes"]
    assert ev["probes"][CONTAINER]["nccl"]["nccl_version"] == "2.27.7"
    assert ev["declared"]["replicas"][0]["container"] == CONTAINER
    assert abs(ev["read_at"] - time.time()) < 60  # the containers' age: a crash loop is a recent start
    result = runner.result_of(HOST, ev)
    assert result.checked and result.diagnosis.findings == []


def test_reader_without_sudo_data_runs_as_the_ssh_user():
    host = FakeHost([(True, snapshot_lines(containers=["[]", "__gpufleet_rc=0"]))], sudo=False)
    ev = reader.read_node(host, fleet_node())
    assert len(host.calls) == 1, "no containers: no probe round trip"
    assert "_sudo" not in host.calls[0]
    assert ev["probes"] == {}


def test_a_timed_out_probe_round_trip_leaves_the_node_unchecked_but_judged():
    host = FakeHost([(True, snapshot_lines(acs=text_acs_on())), TimeoutError()])
    ev = reader.read_node(host, fleet_node())
    assert not ev["read"]["complete"]
    assert ev["read"]["errors"] == [f"container probes: no answer within {reader.PROBES_TIMEOUT} s"]
    result = runner.result_of(HOST, ev)
    assert not result.checked
    assert "nccl.acs-redirect" in [f.id for f in result.diagnosis.findings], "what was read is still judged"
    assert runner.DoctorRun([result]).exit_code == 1


def test_a_failed_snapshot_is_not_judged():
    host = FakeHost([(False, ["sudo: a password is required"])])
    ev = reader.read_node(host, fleet_node())
    result = runner.result_of(HOST, ev)
    assert not result.checked and "sudo: a password is required" in result.error


def text_acs_on():
    from tests.unit.doctor_node import acs_lines

    return acs_lines(redirect=True)


# ------------------------------------------------------------------------------- the command ------
def fake_read(monkeypatch, evidences: dict, unreachable=()):
    nodes = {name: fleet_node() for name in [*evidences, *unreachable]}
    for name, node in nodes.items():
        node.name = name
    fleet = Fleet(nodes)
    monkeypatch.setattr(runner, "read_fleet", lambda *a, **k: (fleet, dict(evidences), list(unreachable)))
    return fleet


def invoke(*args):
    return CliRunner().invoke(main, ["doctor", "inventory/prod.py", *args])


def crash_looping() -> dict:
    ev = healthy_evidence()
    ev["containers"][0].update(status="restarting", running=False, restarting=True, restart_count=6, exit_code=1)
    ev["logs"][CONTAINER] = text(LOGS / "nccl-unhandled-cuda.log")
    ev["probes"][CONTAINER]["nccl"]["nccl_version"] = "2.26.2"
    for gpu in ev["gpu_perf"]["gpus"]:  # a crashed replica holds no GPU memory
        gpu["memory_used_mib"] = 2
    ev["apps"]["apps"] = []
    return ev


def test_exit_0_when_every_node_is_healthy(monkeypatch):
    fake_read(monkeypatch, {"gpu-node-01": healthy_evidence(), "gpu-node-02": healthy_evidence()})
    result = invoke()
    assert result.exit_code == 0, result.output
    assert "gpu-node-01: healthy" in result.output and "gpu-node-02: healthy" in result.output
    assert "2 GPU nodes: 0 with findings (0 errors, 0 warnings), 0 not checked" in result.output


def test_exit_2_with_findings_their_evidence_and_fix(monkeypatch):
    fake_read(monkeypatch, {"gpu-node-01": crash_looping(), "gpu-node-02": healthy_evidence()})
    result = invoke()
    assert result.exit_code == 2, result.output
    assert "gpu-node-01: 2 findings" in result.output
    assert f"ERROR   replica.crash-loop ({CONTAINER}): {CONTAINER} is crash-looping: NCCL error" in result.output
    assert "ERROR   nccl.version-not-pinned" in result.output
    assert "fix: roll out the image built with the pin" in result.output
    assert "gpu-node-02: healthy" in result.output


def test_exit_1_when_a_node_is_not_checked_even_with_findings_elsewhere(monkeypatch):
    fake_read(monkeypatch, {"gpu-node-01": crash_looping()}, unreachable=["gpu-node-02"])
    result = invoke()
    assert result.exit_code == 1
    assert "gpu-node-02: NOT CHECKED: unreachable over SSH" in result.output


def test_json_output(monkeypatch):
    fake_read(monkeypatch, {"gpu-node-01": crash_looping()}, unreachable=["gpu-node-02"])
    result = invoke("--json")
    payload = json.loads(result.output)
    assert payload["exit_code"] == result.exit_code == 1
    assert payload["unhealthy"] == ["gpu-node-01"] and payload["unchecked"] == ["gpu-node-02"]
    node = payload["nodes"][0]
    assert [f["id"] for f in node["findings"]] == ["replica.crash-loop", "nccl.version-not-pinned"]
    assert {"what", "where", "value"} <= set(node["findings"][0]["evidence"][0])


def test_report_file_is_written(monkeypatch, tmp_path):
    fake_read(monkeypatch, {"gpu-node-01": crash_looping()})
    report = tmp_path / "doctor.md"
    result = invoke("--report", str(report))
    assert result.exit_code == 2
    body = report.read_text()
    assert body.startswith("# gpufleet doctor report")
    for section in ("### Findings", "### Versions", "### GPUs", "### Topology", "### Replicas and flags",
                    "### Log excerpts"):
        assert section in body
    assert "`replica.crash-loop`" in body and "NCCL error: unhandled cuda error" in body
    assert "gpu-node-01" not in body and "<host-1>" in body


def test_bad_inventory_is_exit_1_before_any_connection(tmp_path):
    result = CliRunner().invoke(main, ["doctor", str(tmp_path / "missing.py")])
    assert result.exit_code == 1 and "an inventory file that exists" in result.output


def test_no_gpu_node_selected_is_not_a_clean_check(monkeypatch):
    fake_read(monkeypatch, {})
    result = invoke("--limit", "lb-01")
    assert result.exit_code == 1 and "no GPU node (group gpu_nodes) in inventory/prod.py matching lb-01" in result.output
