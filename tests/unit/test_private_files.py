"""What gpufleet writes on the control host is owner-only from the first byte (gpufleet/private_files.py)."""

import os
import stat

from gpufleet.drift_counters import CounterStore
from gpufleet.private_files import write_private
from gpufleet.rollout import Rollout


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_write_private_is_0600_in_a_0700_directory_whatever_the_umask(tmp_path):
    old = os.umask(0o000)  # the most permissive umask: the mode must not come from it
    try:
        target = tmp_path / "state" / "deep" / "report.json"
        write_private(target, "{}\n")
        write_private(target, '{"again": 1}\n')  # replaced atomically, still 0600
    finally:
        os.umask(old)
    assert _mode(target) == 0o600 and _mode(target.parent) == 0o700
    assert target.read_text() == '{"again": 1}\n'
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]  # no temporary file left


def test_rollout_state_and_drift_counters_are_owner_only(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUFLEET_STATE_DIR", str(tmp_path / "state"))
    old = os.umask(0o022)
    try:
        rollout = Rollout(id="r-test", inventory="inventory/lab.py", overrides={}, holder="sre@control", since="now",
                          canary=1, max_unavailable=1, nodes={})
        rollout.save()
        counters = CounterStore(tmp_path / "drift" / "counters.json")
        counters.host("gpu-node-1").now = {"xids": 0}
        counters.save()
    finally:
        os.umask(old)
    assert _mode(rollout.path()) == 0o600 and _mode(rollout.path().parent) == 0o700
    assert _mode(tmp_path / "drift" / "counters.json") == 0o600
