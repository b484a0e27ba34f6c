"""Working directories a run claims, so that the next run can tell a crash's leftovers from work in progress.

A backup exports into ``<stamp>.partial`` (or a staging directory, for a bucket) and a restore
from a bucket downloads into one; each is removed (or renamed into place) when the run ends. A run
that is killed (``systemctl stop`` of the timer's service past its stop timeout, the OOM killer, a
reboot) leaves its directory behind: owner-only copies of the fleet's documents that nothing would
ever remove.

A run claims its directory with an exclusive ``flock`` on ``<directory>.lock``, taken *before* the
directory is made and held until the directory is renamed into place or removed. The kernel drops
the lock when the process dies, however it dies, so a later run that can take the lock knows the
owner is gone and removes both (:func:`sweep`). Age alone is never the test for a claimed
directory: a large backup may run for hours without touching its directory's mtime.

A directory with no lock file at all was left by a gpufleet without claims: removed once it is an
hour old (a lock file with no directory, a run killed between the two, goes at once).

The state and backup directories are local file systems: on NFS, Linux emulates ``flock`` with
POSIX locks, which do not conflict within one process.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from pathlib import Path

LOCK_SUFFIX = ".lock"
UNCLAIMED_AFTER_S = 3600  # a directory without a lock file: left by a gpufleet without claims
CONTENDED_S = 1.0  # how long a claim waits out a sweep that holds the lock file it opened


def lock_path(directory: Path) -> Path:
    return directory.with_name(directory.name + LOCK_SUFFIX)


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open on ``fd`` (a sweep may have unlinked it meanwhile)."""
    try:
        at_path = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (at_path.st_dev, at_path.st_ino)


class Claim:
    """An exclusive claim on ``directory`` (made by the caller, after this): released by
    :meth:`release`, or by the process's end. ``BlockingIOError`` when another live run holds it."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.lock = lock_path(directory)
        # A sweep holds a lock file for milliseconds (it found it unheld between our open and our
        # flock, and is removing it): try again for a moment. A live run holds it for its whole run.
        deadline = time.monotonic() + CONTENDED_S
        while True:
            fd = os.open(self.lock, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)
                continue
            except BaseException:
                os.close(fd)
                raise
            try:
                ours = _same_file(fd, self.lock)
            except BaseException:
                os.close(fd)
                raise
            if ours:
                self._fd: int | None = fd
                return
            os.close(fd)  # a sweep removed that lock file between our open and our flock: again

    def release(self) -> None:
        """Remove the lock file, then drop the lock. Callers release only once the directory is
        renamed into place or removed, so a sweep that takes the lock next finds nothing to remove."""
        if self._fd is None:
            return
        self.lock.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


def sweep(parent: Path, pattern: str, now: float | None = None) -> list[Path]:
    """Remove the directories matching ``pattern`` in ``parent`` whose run is gone, with their lock
    files (and lock files whose directory is gone); return the directories removed. Never fails the
    caller's run: what cannot be read or removed now is left for the next sweep.

    >>> import tempfile; root = Path(tempfile.mkdtemp())
    >>> claim = Claim(root / "20261206T020000Z.partial"); (root / "20261206T020000Z.partial").mkdir()
    >>> sweep(root, "*.partial")   # its run holds the lock: kept
    []
    >>> os.close(claim._fd); claim._fd = None   # as when the process dies
    >>> [p.name for p in sweep(root, "*.partial")], sorted(p.name for p in root.iterdir())
    (['20261206T020000Z.partial'], [])
    >>> root.rmdir()
    """
    now = time.time() if now is None else now
    removed = []
    try:
        entries = sorted(parent.glob(pattern))
        orphan_locks = sorted(parent.glob(pattern + LOCK_SUFFIX))
    except OSError:
        return []
    for directory in entries:
        try:
            if directory.is_symlink() or not directory.is_dir():
                continue
            lock = lock_path(directory)
            if lock.exists():
                if _remove_if_unheld(lock, directory):
                    removed.append(directory)
            elif now - directory.stat().st_mtime >= UNCLAIMED_AFTER_S:
                shutil.rmtree(directory)
                removed.append(directory)
        except OSError:  # published, discarded or removed by another run meanwhile; or not ours to remove
            continue
    for lock in orphan_locks:  # a run killed after its lock, before its directory
        directory = lock.with_name(lock.name[:-len(LOCK_SUFFIX)])
        try:
            if not directory.exists():
                _remove_if_unheld(lock, directory)
        except OSError:
            continue
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
        if not _same_file(fd, lock):
            return False  # released and replaced since we opened it: not ours to judge
        shutil.rmtree(directory, ignore_errors=True)
        lock.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)
