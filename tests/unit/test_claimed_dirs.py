"""Claimed working directories: a killed run's leftovers are removed by the next run, a live run's never.

The runs here are real processes, killed with SIGKILL (what the OOM killer or a stop timeout does):
no Python ``finally`` runs, only the kernel drops the lock.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpufleet import backup_store
from gpufleet.backup_store import LocalStore, S3Access, S3Store, StoreError
from gpufleet.claimed_dirs import UNCLAIMED_AFTER_S, Claim, sweep

CLAIMING_RUN = """
import sys, time
from pathlib import Path
from gpufleet.claimed_dirs import Claim
directory = Path(sys.argv[1])
Claim(directory); directory.mkdir(); (directory / "docs.jsonl").write_text("rows")
print("claimed", flush=True)
time.sleep(600)
"""


def _run_that_claims(directory: Path) -> subprocess.Popen:
    run = subprocess.Popen([sys.executable, "-c", CLAIMING_RUN, str(directory)], stdout=subprocess.PIPE, text=True,
                           cwd=Path(__file__).resolve().parents[2])
    assert run.stdout.readline().strip() == "claimed"
    return run


def _killed(run: subprocess.Popen) -> None:
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=30)


def test_a_live_runs_directory_is_kept_and_a_killed_runs_is_removed_with_its_lock(tmp_path):
    partial = tmp_path / "20261206T020000Z.partial"
    run = _run_that_claims(partial)
    try:
        assert sweep(tmp_path, "*.partial") == []
        assert (partial / "docs.jsonl").read_text() == "rows"
    finally:
        _killed(run)
    assert sweep(tmp_path, "*.partial") == [partial]
    assert list(tmp_path.iterdir()) == []


def test_a_directory_without_a_lock_is_removed_only_once_it_is_an_hour_old(tmp_path):
    older = tmp_path / "20261205T020000Z.partial"  # left by a gpufleet without claims
    older.mkdir()
    assert sweep(tmp_path, "*.partial") == []  # it may be a run that has not taken its lock yet
    now = time.time() + UNCLAIMED_AFTER_S + 1
    assert sweep(tmp_path, "*.partial", now=now) == [older] and not older.exists()


def test_a_lock_left_without_its_directory_is_removed_and_other_names_are_not_touched(tmp_path):
    (tmp_path / "20261206T020000Z.partial.lock").write_text("")
    (tmp_path / "20261206T020000Z").mkdir()  # a whole backup
    (tmp_path / "my-copy.partial-not").mkdir()
    sweep(tmp_path, "*.partial")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["20261206T020000Z", "my-copy.partial-not"]


def test_a_second_claim_on_a_live_directory_is_refused(tmp_path):
    first = Claim(tmp_path / "d")
    with pytest.raises(BlockingIOError):
        Claim(tmp_path / "d")
    first.release()
    assert not (tmp_path / "d.lock").exists()
    Claim(tmp_path / "d").release()


def test_a_local_backup_sweeps_a_killed_runs_partial_and_refuses_a_live_ones_second(tmp_path):
    store = LocalStore(tmp_path)
    (tmp_path / "prod").mkdir()
    run = _run_that_claims(tmp_path / "prod" / "20261206T020000Z.partial")
    try:
        with pytest.raises(StoreError, match="another backup is running"):
            store.stage("prod", "20261206T020000Z")
    finally:
        _killed(run)
    staged = store.stage("prod", "20261206T030000Z")  # the killed run's .partial goes first
    assert sorted(p.name for p in (tmp_path / "prod").iterdir()) == ["20261206T030000Z.partial.lock"]
    staged.mkdir()
    (staged / "manifest.json").write_text("{}")
    store.publish(staged, "prod", "20261206T030000Z")
    assert sorted(p.name for p in (tmp_path / "prod").iterdir()) == ["20261206T030000Z"]
    assert store.whole("prod") == ["20261206T030000Z"]


def test_a_bucket_backups_staging_dir_is_claimed_and_a_killed_runs_is_swept(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUFLEET_STATE_DIR", str(tmp_path / "state"))
    store = S3Store("fleet-backups", "milvus", S3Access())
    monkeypatch.setattr(store, "whole", lambda stem: [])  # no bucket to list: the staging side only
    os.makedirs(backup_store.staging_root())
    run = _run_that_claims(backup_store.staging_root() / "prod-20261206T020000Z-abc")
    _killed(run)
    staged = store.stage("prod", "20261206T030000Z")
    assert staged.is_dir() and staged.parent == backup_store.staging_root()
    assert sorted(p.name for p in staged.parent.iterdir()) == [staged.name, staged.name + ".lock"]
    store.discard(staged)
    assert list(staged.parent.iterdir()) == []
