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

from gpufleet import claimed_dirs
from gpufleet.backup_store import LocalStore, StoreError
from gpufleet.claimed_dirs import CONTENDED_S, UNCLAIMED_AFTER_S, Claim, sweep

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


def test_a_lock_left_without_its_directory_is_removed_and_a_whole_backup_is_not(tmp_path):
    (tmp_path / "20261206T020000Z.partial.lock").write_text("")
    (tmp_path / "20261205T020000Z").mkdir()  # a whole backup, old: not a .partial, never swept
    os.utime(tmp_path / "20261205T020000Z", (0, 0))
    assert sweep(tmp_path, "*.partial") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["20261205T020000Z"]


def test_an_operators_own_partial_named_directory_is_not_a_backup_runs_leftover(tmp_path):
    mine = tmp_path / "prod" / "my-copy.partial"  # not a name gpufleet gives: kept however old
    mine.mkdir(parents=True)
    os.utime(mine, (0, 0))
    LocalStore(tmp_path).stage("prod", "20261206T030000Z")
    assert mine.is_dir()


def test_a_sweep_does_not_fail_when_a_directory_goes_under_it(tmp_path, monkeypatch):
    gone = tmp_path / "20261206T020000Z.partial"
    gone.mkdir()
    real_lock_path = claimed_dirs.lock_path

    def published_meanwhile(directory):  # another run renamed it between the glob and the stat
        directory.rmdir()
        return real_lock_path(directory)

    monkeypatch.setattr(claimed_dirs, "lock_path", published_meanwhile)
    assert sweep(tmp_path, "*.partial") == []


def _flock_that_first(monkeypatch, meanwhile):
    """fcntl.flock whose first call runs ``meanwhile()`` before it locks: another process's step
    landing in the window between an open and its flock."""
    real_flock, calls = claimed_dirs.fcntl.flock, []

    def flock(fd, op):
        if not calls:
            calls.append(fd)
            meanwhile()
        return real_flock(fd, op)

    monkeypatch.setattr(claimed_dirs.fcntl, "flock", flock)


def test_a_claim_whose_lock_file_a_sweep_removed_before_its_flock_takes_a_new_one(tmp_path, monkeypatch):
    """The claimant opened the lock file, a sweep (which found it unheld) removed it, the claimant
    locked the deleted file: it must not count that as a claim (a second one would also succeed)."""
    directory, lock = tmp_path / "d", tmp_path / "d.lock"
    _flock_that_first(monkeypatch, lock.unlink)
    claim = Claim(directory)
    assert lock.exists() and os.fstat(claim._fd).st_ino == lock.stat().st_ino
    monkeypatch.undo()
    with pytest.raises(BlockingIOError):
        Claim(directory)
    claim.release()


def test_a_stale_sweep_never_removes_a_directory_claimed_again_meanwhile(tmp_path, monkeypatch):
    """A sweep opened a dead run's lock file; before its flock, another sweep removed both and a new
    run of the same name claimed and made the directory. The first sweep's flock then succeeds (on
    the unlinked file): it must leave the live run's directory alone."""
    directory = tmp_path / "20261206T020000Z.partial"
    dead = _run_that_claims(directory)
    _killed(dead)
    live: list[Claim] = []

    def other_sweep_then_new_run():
        (directory / "docs.jsonl").unlink()
        directory.rmdir()
        (tmp_path / "20261206T020000Z.partial.lock").unlink()
        live.append(Claim(directory))
        directory.mkdir()

    _flock_that_first(monkeypatch, other_sweep_then_new_run)
    assert sweep(tmp_path, "*.partial") == []
    assert directory.is_dir() and (tmp_path / "20261206T020000Z.partial.lock").exists()
    live[0].release()


def test_a_failed_rename_at_publish_releases_the_claim_and_removes_the_partial(tmp_path):
    store = LocalStore(tmp_path)
    staged = store.stage("prod", "20261206T030000Z")
    staged.mkdir()
    (staged / "manifest.json").write_text("{}")
    (tmp_path / "prod" / "20261206T030000Z" / "x").mkdir(parents=True)  # a non-empty directory in the way
    with pytest.raises(OSError):
        store.publish(staged, "prod", "20261206T030000Z")
    assert sorted(p.name for p in (tmp_path / "prod").iterdir()) == ["20261206T030000Z"]


def test_a_second_claim_on_a_live_directory_is_refused_after_a_moment(tmp_path):
    first = Claim(tmp_path / "d")
    started = time.monotonic()
    with pytest.raises(BlockingIOError):
        Claim(tmp_path / "d")
    assert time.monotonic() - started >= CONTENDED_S
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


def test_a_location_that_cannot_be_written_is_a_store_error_naming_it(tmp_path):
    """As for a non-root operator and /var/lib/gpufleet/backups: a message, not a traceback (here the
    location is under a file, since these tests may run as root, whom permissions do not stop)."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(StoreError, match=rf"{blocker}/backups/prod: .*--to, or milvus_backup_dir"):
        LocalStore(blocker / "backups").stage("prod", "20261206T030000Z")
