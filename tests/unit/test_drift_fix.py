"""`drift --fix` and the nightly timer: a checkout with uncommitted changes is never deployed unless
asked for out loud, and the report says which commit was; the counters file keeps the last run.

The checkouts are real git repositories made under tmp_path.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from click.testing import CliRunner

from gpufleet.checkout import revision
from gpufleet.drift import DriftItem, DriftReport, HostDrift, _fix, render_text, write_prometheus
from gpufleet.drift_counters import CounterStore
from gpufleet.drift_timer import units


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@example.org", "HOME": str(repo), "PATH": "/usr/bin:/bin"})


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "checkout"
    (root / "group_data").mkdir(parents=True)
    (root / "group_data" / "all.py").write_text('nccl_version = "2.27.7"\n')
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-qm", "fleet")
    return root


def test_a_clean_checkout_is_its_commit(repo):
    state = revision(repo)
    assert state.clean and len(state.commit) == 40 and state.refusal() is None


def test_an_edited_or_untracked_file_makes_the_checkout_dirty(repo):
    (repo / "group_data" / "all.py").write_text('nccl_version = "2.27.3"\n')
    (repo / "group_data" / "gpu_nodes.py").write_text("gpu_count = 2\n")
    state = revision(repo)
    assert not state.clean and state.dirty == [" M group_data/all.py", "?? group_data/gpu_nodes.py"]
    why = state.refusal()
    assert "uncommitted changes (group_data/all.py, group_data/gpu_nodes.py)" in why and "--allow-dirty" in why


def test_a_directory_that_is_not_a_checkout_is_refused(tmp_path):
    state = revision(tmp_path)
    assert state.commit is None and "cannot tell what would be deployed" in state.refusal()


def drifted_report():
    return DriftReport([HostDrift("gpu-node-2", items=[DriftItem("plan", "Blacklist nouveau", "differs")]),
                        HostDrift("gpu-node-3", error="timed out reading GPU health (nvidia-smi)",
                                  items=[DriftItem("runtime", "gpus", "1 GPUs visible, expected 2")])], started=1.0)


def test_fix_refuses_a_dirty_checkout_before_planning_anything(repo, tmp_path):
    (repo / "group_data" / "all.py").write_text('nccl_version = "2.27.3"\n')
    report = drifted_report()
    # An inventory that does not exist: planning it would raise, so reaching the deploy would fail here.
    _fix(report, revision(repo), str(tmp_path / "no-such-inventory.py"), None, allow_dirty=False)
    assert report.fixed == {} and report.exit_code == 1
    assert report.fix["refused"].startswith("the checkout at ") and report.fix["dirty"] == [" M group_data/all.py"]
    data = report.as_dict()
    assert data["fix"]["commit"] == revision(repo).commit and data["ok"] is False
    assert "--fix refused: the checkout at" in render_text(report)
    write_prometheus(report, str(tmp_path / "d.prom"))
    assert "gpufleet_drift_fix_refused 1.0" in (tmp_path / "d.prom").read_text()


def test_a_clean_checkout_goes_on_to_plan_the_drifted_hosts(repo, tmp_path):
    # The control for the refusals above: with nothing refusing, --fix plans the inventory (which
    # here does not exist, so the attempt shows as the loader's error).
    from gpufleet.settings import SettingsError

    with pytest.raises(SettingsError, match="an inventory file that exists"):
        _fix(drifted_report(), revision(repo), str(tmp_path / "no-such-inventory.py"), None, allow_dirty=False)


def test_fix_never_deploys_a_host_that_was_not_fully_checked(repo, tmp_path):
    report = DriftReport([HostDrift("gpu-node-3", error="timed out reading GPU health (nvidia-smi)",
                                    items=[DriftItem("runtime", "gpus", "1 GPUs visible, expected 2")])], started=1.0)
    _fix(report, revision(repo), str(tmp_path / "no-such-inventory.py"), None, allow_dirty=False)
    assert report.fix["hosts"] == [] and report.fix["refused"] is None and report.fixed == {}


def test_allow_dirty_records_the_commit_and_the_changes_it_deploys(repo, tmp_path):
    (repo / "group_data" / "all.py").write_text('nccl_version = "2.27.3"\n')
    report = DriftReport([HostDrift("gpu-node-1")], started=1.0)  # nothing drifted: nothing to deploy
    _fix(report, revision(repo), str(tmp_path / "no-such-inventory.py"), None, allow_dirty=True)
    assert report.fix == {"commit": revision(repo).commit, "dirty": [" M group_data/all.py"], "allowed_dirty": True,
                          "refused": None, "hosts": []}
    assert report.exit_code == 0


def test_every_report_names_the_revision_it_compared_with():
    from gpufleet import PROJECT_ROOT

    state = revision(PROJECT_ROOT)
    report = DriftReport([HostDrift("a")], started=1.0, checkout=state.as_dict())
    assert report.as_dict()["checkout"]["commit"] == state.commit


# ---------------------------------------------------------------------------- nightly ----------
def test_the_nightly_unit_keeps_counters_and_fixes_only_when_asked():
    plain = units("inventory/prod.py", "*-*-* 03:00:00", "/var/lib/gpufleet/drift", "/tmp/tf", fix=False)
    service = plain["gpufleet-drift.service"]
    assert "--counters /var/lib/gpufleet/drift/counters.json" in service and "--fix" not in service
    fixing = units("inventory/prod.py", "*-*-* 03:00:00", "/var/lib/gpufleet/drift", "/tmp/tf", fix=True)
    assert "--fix" in fixing["gpufleet-drift.service"] and "--allow-dirty" not in fixing["gpufleet-drift.service"]
    dirty = units("inventory/prod.py", "*-*-* 03:00:00", "/var/lib/gpufleet/drift", "/tmp/tf", fix=True, allow_dirty=True)
    assert "--fix --allow-dirty" in dirty["gpufleet-drift.service"]


def test_allow_dirty_without_fix_is_a_usage_error(tmp_path):
    from gpufleet.cli import main

    result = CliRunner().invoke(main, ["drift", "install-timer", "inventory/prod.py", "--allow-dirty", "--no-enable",
                                       "--unit-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--allow-dirty only means something with --fix" in result.output
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- counters ---------
def test_counters_survive_between_runs_and_keep_hosts_not_read_this_time(tmp_path):
    path = tmp_path / "drift" / "prod-counters.json"
    first = CounterStore(path)
    first.host("gpu-node-1").now.update({"boot_id": "b1", "xid": {"count": 2, "last_t": 20.0}})
    first.host("gpu-node-2").now.update({"restarts": {"c" * 64: 1}})
    first.save()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    second = CounterStore(path)
    assert second.host("gpu-node-1").before["xid"] == {"count": 2, "last_t": 20.0}
    second.host("gpu-node-2")  # not readable this time: nothing new recorded
    second.save()
    kept = json.loads(path.read_text())["hosts"]
    assert kept["gpu-node-2"]["restarts"] == {"c" * 64: 1} and kept["gpu-node-1"]["boot_id"] == "b1"


def test_an_unreadable_counters_file_starts_again(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("{not json")
    assert CounterStore(path).host("gpu-node-1").before == {}
