"""``gpufleet backup`` / ``gpufleet restore``: the fleet's Milvus to and from a directory on the
control host or an S3-compatible bucket (gpufleet/backup_store.py: the layout, and why a backup
is whole only once its manifest is there).

The Milvus host is the inventory's ``vector_db`` host. The control host reaches its Milvus through
the SSH session pyinfra opens (operations/port_forward.py), and a child process exports or restores
every collection with pymilvus (gpufleet/milvus_dump.py says why a logical export, and its format).

- A backup lands in ``<location>/<inventory stem>/<UTC time>/`` (``location``: ``--to``, a path or
  ``s3://bucket/prefix``; default the Milvus host's ``milvus_backup_dir``, where the nightly timer,
  a rollout's pre-upgrade backup and drift's backup-age check look too: one place per fleet),
  owner-only on disk (the documents are the fleet's data). A bucket is reached with the Milvus
  host's ``milvus_backup_s3_*`` settings.
- With Milvus authentication on, the child logs in as ``root`` with the Milvus host's
  ``milvus_root_password_file`` (read on the control host, handed to the child in its environment,
  ``MILVUS_USER``/``MILVUS_PASSWORD``: never on a command line, never printed): a backup reads every
  collection and a restore creates them, which the app's user may not.
- A restore checks every file against the manifest's sha256 and refuses collections that exist
  with rows (``--replace`` replaces them) before it writes anything; each collection is restored
  under a temporary name and takes the original's place only once its rows match the manifest's
  (gpufleet/milvus_dump.py restore()); then each collection's row count is compared with the
  manifest's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gpufleet.backup_store import BackupError, S3Access, open_store
from gpufleet.private_files import write_private
from operations.port_forward import forwarded

__all__ = ["BackupError", "backup", "restore", "row_counts", "counts_through", "most_rows", "prune",
           "dropped_rows", "store_for"]


def s3_access(settings) -> S3Access:
    """The Milvus host's ``milvus_backup_s3_*`` settings."""
    return S3Access(settings.milvus_backup_s3_endpoint, settings.milvus_backup_s3_region,
                    settings.milvus_backup_s3_credentials_file)


def store_for(location: str | None, inventory: str, overrides: dict[str, Any] | None = None):
    """The store at ``location`` (None: the Milvus host's ``milvus_backup_dir``); a bucket is reached with the
    ``milvus_backup_s3_*`` settings of ``inventory``'s Milvus host. An inventory with no Milvus
    host is refused here, before any bucket or host is asked."""
    from gpufleet.fleet import load_fleet

    db = load_fleet(inventory, overrides).vector_db
    if db is None:
        raise BackupError(f"{inventory} has no host in group vector_db: there is no Milvus to back up")
    return open_store(location or db.settings.milvus_backup_dir, s3_access(db.settings))


def _dump(action: str, port: int, directory: Path | None = None, replace: bool = False,
          root_password_file: str | None = None) -> dict[str, Any]:
    command = [sys.executable, "-W", "ignore", "-m", "gpufleet.milvus_dump", action,
               "--uri", f"http://127.0.0.1:{port}"] + (["--dir", str(directory)] if directory else [])
    if replace:
        command.append("--replace")
    env = {k: v for k, v in os.environ.items() if k not in ("MILVUS_USER", "MILVUS_PASSWORD")}
    if root_password_file:  # the settings checked it: one non-empty line
        env.update(MILVUS_USER="root", MILVUS_PASSWORD=Path(root_password_file).expanduser().read_text().strip())
    run = subprocess.run(command, capture_output=True, text=True, timeout=6 * 3600, env=env)
    if run.returncode != 0:  # a refusal's lines, or the error's last lines (pymilvus says a lot)
        lines = run.stderr.strip().splitlines() or ["(no output)"]
        raise BackupError("\n".join(lines if "refused" in run.stderr else lines[-3:]))
    return json.loads(run.stdout.strip().splitlines()[-1])


def _on_milvus_host(inventory: str, overrides: dict[str, Any] | None, work):
    """``work(fleet, db, local port)`` with a tunnel to the Milvus host's Milvus."""
    from gpufleet.fleet import load_fleet
    from gpufleet.remote import connected

    fleet = load_fleet(inventory, overrides)
    db = fleet.vector_db
    if db is None:
        raise BackupError(f"{inventory} has no host in group vector_db: there is no Milvus to back up")
    with connected(inventory, [db.name], overrides) as (_, fleet, reachable, _unreachable):
        if not reachable:
            raise BackupError(f"{db.name} (the Milvus host) is unreachable over SSH")
        with forwarded(reachable[0], db.milvus_address, db.settings.milvus_port) as port:
            return work(fleet, db, port)


def most_rows(store, stem: str) -> dict[str, int]:
    """The most rows each collection has in any whole backup of ``stem`` in ``store``."""
    most: dict[str, int] = {}
    for stamp in store.whole(stem):
        for name, entry in store.manifest(stem, stamp)["collections"].items():
            most[name] = max(most.get(name, 0), entry["rows"])
    return most


def prune(store, stem: str, keep: int, removed: list[str] | None = None) -> list[str]:
    """Remove all but the newest ``keep`` whole backups of ``stem``; where the removed ones were
    (appended to ``removed`` as each goes, so a caller knows them when a later one fails)."""
    removed = [] if removed is None else removed
    for stamp in store.whole(stem)[:-keep]:
        removed.append(store.remove(stem, stamp))
    return removed


def dropped_rows(previous: dict[str, int], now: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Collections with fewer rows than in the previous backup (or gone): ``{name: (before, now)}``.

    >>> dropped_rows({"docs": 120, "old": 5, "grew": 1}, {"docs": 100, "grew": 9, "new": 3})
    {'docs': (120, 100), 'old': (5, 0)}
    """
    return {name: (n, now.get(name, 0)) for name, n in previous.items() if now.get(name, 0) < n}


def backup(inventory: str, to: str | None = None, overrides: dict[str, Any] | None = None,
           keep: int | None = None) -> dict[str, Any]:
    """Export every collection of the fleet's Milvus; return ``{"dir": where the backup is,
    "collections": {name: rows}, "dropped": {name: (most rows in a kept backup, rows now)},
    "removed": [older backups removed], "prune_error": None, or why removing them stopped}``.

    ``to``: a directory or ``s3://bucket/prefix`` (None: the fleet's ``milvus_backup_dir``). ``keep``: how
    many whole backups of this inventory to keep, this one included (None: all). Rows are compared
    with the most each collection had in any kept backup, and while one has fewer nothing is
    removed: the copy with the rows stays, and so does the alert, until the rows are back (a
    restore) or an operator removes the older backups (the drop was meant). Once the backup is
    published it is kept whatever happens to the older ones: a removal that fails is returned in
    ``prune_error``, not raised (the backup is there, and its caller reports both).
    """
    store = store_for(to, inventory, overrides)  # a bad location or credentials file: before any host
    stem = Path(inventory).stem
    previous = most_rows(store, stem)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    staged = store.stage(stem, stamp)

    def work(fleet, db, port):
        counts = _dump("export", port, staged, root_password_file=db.settings.milvus_root_secret())
        manifest = json.loads((staged / "manifest.json").read_text())
        manifest["source"] = {"inventory": inventory, "host": db.name, "milvus_mode": db.settings.milvus_mode}
        write_private(staged / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True))
        return counts

    try:
        counts = _on_milvus_host(inventory, overrides, work)
    except BaseException:
        store.discard(staged)
        raise
    where = store.publish(staged, stem, stamp)
    dropped = dropped_rows(previous, counts)
    removed: list[str] = []
    prune_error = None
    if keep is not None and not dropped:
        try:
            prune(store, stem, keep, removed)
        except Exception as exc:  # an S3 refusal, a permission, a vanished directory: the new backup stands
            prune_error = str(exc) or type(exc).__name__
    return {"dir": where, "collections": counts, "dropped": dropped, "removed": removed, "prune_error": prune_error}


def restore(inventory: str, source: str, replace: bool = False,
            overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Recreate the backup's collections on the fleet's Milvus; raise BackupError unless every count matches.

    ``source``: a backup's directory, or its ``s3://`` location (downloaded first, then checked
    like a directory).
    """
    store = store_for(source, inventory, overrides)
    with store.fetched(source) as directory:
        if not (directory / "manifest.json").is_file():
            raise BackupError(f"{source} holds no manifest.json: not a gpufleet backup (or an unfinished one)")
        result = _on_milvus_host(inventory, overrides, lambda fleet, db, port: _dump(
            "restore", port, directory, replace, root_password_file=db.settings.milvus_root_secret()))
    wrong = {name: c for name, c in result.items() if c["rows"] != c["expected"]}
    if wrong:
        raise BackupError("restored, but the row counts differ from the backup's: "
                          + ", ".join(f"{n}: {c['rows']} of {c['expected']}" for n, c in wrong.items()))
    return {"dir": source, "collections": {name: c["rows"] for name, c in result.items()}}


def row_counts(inventory: str, overrides: dict[str, Any] | None = None) -> dict[str, int]:
    """Rows per collection of the fleet's Milvus now."""
    return _on_milvus_host(inventory, overrides, lambda fleet, db, port: counts_through(
        port, db.settings.milvus_root_secret()))


def counts_through(port: int, root_password_file: str | None = None) -> dict[str, int]:
    """Rows per collection of the Milvus a tunnel reaches on 127.0.0.1:``port`` (operations/port_forward.py),
    as root with ``root_password_file`` where Milvus authenticates."""
    return _dump("counts", port, root_password_file=root_password_file)
