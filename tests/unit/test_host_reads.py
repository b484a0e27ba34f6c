"""Hangs: a read that does not answer makes its host "not checked", named, within the time limit.

These run pyinfra for real against ``@local`` (this machine), with a stand-in ``nvidia-smi`` that
never answers: the control side's limit (pyinfra ``_timeout``) is what stops the wait, as it must
for a tool stuck in the kernel, which no signal on the host can stop.
"""

from __future__ import annotations

import stat
import time

import pytest
from pyinfra.api import Config, FactBase, Inventory, State
from pyinfra.api.connect import connect_all, disconnect_all

from gpufleet.drift import DriftItem, DriftReport, HostDrift, render_text, write_prometheus
from gpufleet.drift_counters import Seen
from gpufleet.host_reads import NotChecked, ReadFailures, read, watching
from gpufleet.runtime_checks import HostContext, run
from gpufleet.settings import HostSettings
from operations.facts.util import envelope, wrap


LIMIT = 8  # the control side's limit here: long enough for this machine's quick reads under load


class SlowFact(FactBase):
    command = "echo started; sleep 60; echo done"

    def process(self, output):
        return output


class QuickFact(FactBase):
    command = "echo here"

    def process(self, output):
        return output


@pytest.fixture
def local(tmp_path, monkeypatch):
    """A connected @local host whose PATH holds a hung nvidia-smi and no docker."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    hung = bin_dir / "nvidia-smi"
    hung.write_text("#!/bin/sh\nexec sleep 60\n")
    hung.chmod(hung.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin")
    inventory = Inventory((["@local"], {"_timeout": LIMIT}))
    state = State(inventory, Config())
    connect_all(state)
    yield inventory.get_host("@local")
    disconnect_all(state)


def test_a_read_past_the_control_side_limit_is_not_checked_and_named(local):
    with watching() as failures:
        started = time.monotonic()
        with pytest.raises(NotChecked, match=rf"^timed out reading the slow thing \(no answer within {LIMIT} s\)$"):
            read(local, SlowFact, "the slow thing", failures)
        assert time.monotonic() - started < LIMIT + 10
    assert failures.describe("@local").startswith("timed out reading fact ")
    assert "SlowFact" in failures.describe("@local")


def test_a_read_that_answers_is_returned_as_it_is(local):
    assert read(local, QuickFact, "a quick thing") == ["here"]


def test_a_hung_nvidia_smi_leaves_the_host_not_checked_and_the_other_checks_run(local):
    ctx = HostContext(seen=Seen(), failures=ReadFailures())
    started = time.monotonic()
    items = run(local, HostSettings(gpu_count=2), fleet=None, ctx=ctx)
    assert time.monotonic() - started < 4 * LIMIT
    # (Where dmesg is restricted to root, the kernel log read adds its own problem after this one.)
    assert ctx.problems[0] == f"timed out reading GPU health (nvidia-smi) (no answer within {LIMIT} s)"
    # The driver check before it still reported (this machine has no NVIDIA module).
    assert [i.check for i in items if i.check == "driver loaded"] == ["driver loaded"]


class HungOnTheHost(FactBase):
    """A fact whose tool the host's own limit kills (1 s here; 60 s in the real facts)."""

    command = wrap("nvidia-smi", "nvidia-smi -q", limit=1)

    def process(self, output):
        return envelope(output)[0]


def test_a_read_killed_on_the_host_is_not_checked_either(local):
    with watching() as failures:
        with pytest.raises(NotChecked, match=r"^timed out reading GPU details \(no answer within 1 s\)$"):
            read(local, HungOnTheHost, "GPU details", failures)  # the host's 1 s, before the control side's


def test_pyinfra_error_lines_are_kept_per_host():
    failures = ReadFailures()
    import logging

    logger = logging.getLogger("pyinfra")
    logger.addHandler(failures)
    try:
        logger.error("\x1b[0m[\x1b[1mgpu-node-2\x1b[0m] \x1b[31mCommand timed out after 300s\x1b[0m")
        logger.error("[gpu-node-2] Error: could not load fact: facts.gpu_health.GpuHealth ")
        logger.error("[lb-1] Error: could not load fact: facts.edge.NginxState status_port=8081")
    finally:
        logger.removeHandler(failures)
    assert failures.describe("gpu-node-2") == ("timed out reading fact facts.gpu_health.GpuHealth "
                                               "(no answer within 300 s)")
    assert failures.describe("lb-1") == "could not read fact facts.edge.NginxState status_port=8081"
    assert failures.describe("gpu-node-1") is None


def test_a_timed_out_host_is_reported_not_checked_with_its_findings(tmp_path):
    report = DriftReport([HostDrift("gpu-node-1"),
                          HostDrift("gpu-node-2", error="timed out reading GPU health (nvidia-smi) (no answer within 300 s)",
                                    items=[DriftItem("plan", "Blacklist nouveau", "x.conf: content differs")])],
                         started=1.0)
    assert report.exit_code == 1 and report.as_dict()["unchecked_hosts"] == ["gpu-node-2"]
    text = render_text(report)
    assert "gpu-node-2: NOT CHECKED: timed out reading GPU health (nvidia-smi) (no answer within 300 s) (1 drifted)" in text
    assert "[plan] Blacklist nouveau: x.conf: content differs" in text
    write_prometheus(report, str(tmp_path / "d.prom"))
    assert 'gpufleet_drift_host_unchecked{host="gpu-node-2"} 1.0' in (tmp_path / "d.prom").read_text()



def test_drift_reports_the_hung_host_not_checked_with_the_read_named(local, tmp_path):
    """drift's per-host step (check_host) on a real pyinfra state: the plan part is empty here (no
    operation planned), the runtime part meets the hung nvidia-smi."""
    from gpufleet.drift import check_host
    from gpufleet.drift_counters import CounterStore
    from gpufleet.fleet import Fleet, FleetHost
    from gpufleet.deploy_run import Plan

    settings = HostSettings(gpu_count=2)
    plan = Plan(local.state, Fleet({"@local": FleetHost("@local", ["gpu_nodes"], settings, {})}), [local])
    store = CounterStore(tmp_path / "counters.json")
    with watching() as failures:
        result = check_host(plan, local, HostContext(seen=store.host("@local"), failures=failures))
    assert not result.checked
    assert result.error.startswith(f"timed out reading GPU health (nvidia-smi) (no answer within {LIMIT} s)")
    report = DriftReport([result], started=1.0)
    assert report.exit_code == 1 and "@local: NOT CHECKED: timed out reading GPU health" in render_text(report)
