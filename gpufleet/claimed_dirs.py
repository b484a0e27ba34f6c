"""Working directories a run claims, so that the next run can tell a crash's leftovers from work in progress.

A backup exports into ``<stamp>.partial`` (or a staging directory, for a bucket) and a restore
downloads into one; each is removed when the run ends. A run that is killed (``systemctl stop`` of
the timer's service past its stop timeout, the OOM killer, a reboot) leaves its directory behind:
owner-only copies of the fleet's documents that nothing would ever remove.

A run claims its directory with an exclusive ``flock`` on ``<directory>.lock``, taken *before* the
directory is made and held until it is published or removed. The kernel drops the lock when the
process dies, however it dies, so a later run that can take the lock knows the owner is gone and
removes both (:func:`sweep`). A directory with no lock file at all was left by a version without
claims, or by a crash between publishing and removing the lock: removed once it is an hour old.
Age alone is never the test for a locked one: a large backup may run for hours.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from pathlib import Path

LOCK_SUFFIX = ".lock"
UNCLAIMED_AFTER_S = 3600  # a directory without a lock file: left by an older gpufleet, or a crash at the end


class Claim:
    """An exclusive claim on ``directory`` (not made here): released by :meth:`release`, or by the process's end."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.lock = directory.with_name(directory.name + LOCK_SUFFIX)
        self._fd: int | None = os.open(self.lock, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise

    def release(self) -> None:
        """Remove the lock file, then drop the lock (in that order: a sweep never removes a live one)."""
        if self._fd is None:
            return
        self.lock.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


def sweep(parent: Path, pattern: str, now: float | None = None) -> list[Path]:
    """Remove the directories matching ``pattern`` in ``parent`` whose run is gone, with their lock
    files (and lock files whose directory is gone); return what was removed.

    >>> import tempfile; root = Path(tempfile.mkdtemp())
    >>> claim = Claim(root / "20261206T020000Z.partial"); (root / "20261206T020000Z.partial").mkdir()
    >>> sweep(root, "*.partial")   # its run holds the lock: kept
    []
    >>> os.close(claim._fd); claim._fd = None   # as when the process dies
    >>> [p.name for p in sweep(root, "*.partial")], sorted(p.name for p in root.iterdir())
    (['20261206T020000Z.partial'], [])
    """
    if not parent.is_dir():
        return []
    now = time.time() if now is None else now
    removed = []
    for directory in sorted(p for p in parent.glob(pattern) if p.is_dir() and not p.is_symlink()):
        lock = directory.with_name(directory.name + LOCK_SUFFIX)
        if not lock.exists():
            if now - directory.stat().st_mtime >= UNCLAIMED_AFTER_S:
                shutil.rmtree(directory, ignore_errors=True)
                removed.append(directory)
            continue
        if _remove_if_unheld(lock, directory):
            removed.append(directory)
    for lock in parent.glob(pattern + LOCK_SUFFIX):  # a run killed after its lock, before its directory
        directory = lock.with_name(lock.name[:-len(LOCK_SUFFIX)])
        if not directory.exists():
            _remove_if_unheld(lock, directory)
    return removed


def _remove_if_unheld(lock: Path, directory: Path) -> bool:
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:  # its run just finished
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a run in progress
        shutil.rmtree(directory, ignore_errors=True)
        lock.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)
