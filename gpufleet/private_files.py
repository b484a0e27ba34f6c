"""Files the control host writes about the fleet: owner-only, written atomically.

Decision (issue 10, "the default umask leaves ... 0644"): what gpufleet writes on the control host
describes the fleet (addresses, versions, the commands a plan would run, which nodes a rollout
holds), never a secret value, but nobody else on that machine needs to read it. Rollout state,
drift counters and reports, JUnit files and the remembered fact reads are therefore 0600 in
directories made 0700, created with that mode (never chmod-ed after). Two exceptions, on purpose:
the drift timer's systemd units (0644, as every unit: systemd and `systemctl cat` read them) and
the Prometheus textfile (0644: node_exporter runs as its own user and must read it; it holds
counts only). On the hosts, every file an operation writes has an explicit mode; secret env
files are 0600 from their first byte (operations/secrets.py).
"""

from __future__ import annotations

import os
from pathlib import Path


def state_root() -> Path:
    """Where gpufleet keeps its state on the control host: ``$GPUFLEET_STATE_DIR``, else
    ``~/.local/state/gpufleet`` (rollouts, drift counters, bucket backups' staging, bench results under it)."""
    return Path(os.environ.get("GPUFLEET_STATE_DIR") or Path.home() / ".local/state/gpufleet")


def private_dir(path: Path) -> Path:
    """Make ``path`` (and missing parents) with mode 0700; an existing directory keeps its mode."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def write_private(path: Path | str, text: str) -> None:
    """Write ``text`` to ``path`` as 0600 from the first byte, replacing it atomically.

    The new file's data reaches the disk before the rename: after a power loss the path holds the
    old text or the new one, never an empty file (a rollout's state file is read by --resume).
    """
    path = Path(path)
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sync_dir(path: Path | str) -> None:
    """fsync the directory ``path``: the names made, renamed or removed in it reach the disk (a
    file's own fsync covers its data, not the entry that names it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
