"""Drift of the data tier that no plan can see: the fleet's Milvus backups and its rows.

Run by ``gpufleet drift`` on the Milvus host (inventory group ``vector_db``) only. Milvus down or
unhealthy needs no check of its own: the plan's ``Milvus healthy (/healthz)`` gate would run its
wait on such a host, and the containers check names a stopped or restarting Milvus.

With ``milvus_backup_max_age_h`` set (the production default: a nightly backup, 26 h), drift reads
the backups the nightly timer keeps (``gpufleet backup install-timer --backup-dir``,
``milvus_backup_dir``: the same location by default; a control-host directory or an
``s3://`` bucket, gpufleet/backup_store.py) and reports:

- **no backup**, or a newest whole backup older than ``milvus_backup_max_age_h`` (the timer stopped,
  or its runs fail: a failed run keeps nothing);
- **rows dropped since the last backup**: a collection with fewer rows in Milvus now than in the
  newest backup, or gone. Rows counted through the same SSH tunnel the backup uses
  (operations/port_forward.py, gpufleet/milvus_dump.py), so nothing is opened to the network.

A bucket that cannot be read (its endpoint down, wrong keys) leaves the check NotChecked, which
drift reports as such. Collections that grew, and collections newer than the backup, are fine. ``None`` turns both checks
off (a fleet whose Milvus holds nothing worth a backup, or the lab's default drift runs).
"""

from __future__ import annotations

import datetime
from pathlib import Path

from gpufleet.backup_store import BackupError, S3Access, open_store
from gpufleet.data_backup import counts_through, dropped_rows, s3_access
from gpufleet.drift_item import DriftItem
from gpufleet.host_reads import NotChecked

CHECK = "Milvus backup"


def newest_backup(inventory: str, backup_dir: str, s3: S3Access | None = None) -> tuple[str, str, dict] | None:
    """``(where, stamp, manifest)`` of the newest whole backup of ``inventory`` in ``backup_dir`` (a
    directory or ``s3://``), or None."""
    store = open_store(backup_dir, s3)
    stem = Path(inventory).stem
    kept = store.whole(stem)
    if not kept:
        return None
    return store.where(stem, kept[-1]), kept[-1], store.manifest(stem, kept[-1])


def age_hours(manifest: dict, now: datetime.datetime) -> float:
    """Hours since the backup's manifest was written (its ``created``, UTC).

    >>> age_hours({"created": "2026-12-05T00:00:00Z"}, datetime.datetime(2026, 12, 5, 6, 30, tzinfo=datetime.UTC))
    6.5
    """
    created = datetime.datetime.strptime(manifest["created"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    return (now - created).total_seconds() / 3600


def findings(inventory: str, backup_dir: str, max_age_h: int, rows_now, now: datetime.datetime,
             s3: S3Access | None = None) -> list[DriftItem]:
    """What drift reports about the backups; ``rows_now()`` counts rows in Milvus (only called
    when there is a backup to compare with). A bucket that cannot be read is NotChecked."""
    try:
        newest = newest_backup(inventory, backup_dir, s3)
    except BackupError as exc:
        raise NotChecked(f"could not read the backups: {exc}") from None
    if newest is None:
        return [DriftItem("runtime", CHECK, f"no backup of {Path(inventory).stem} in {backup_dir}",
                          [f"expected one at most {max_age_h} h old: `gpufleet backup install-timer` installs the "
                           "nightly backup, `gpufleet backup run` takes one now"])]
    where, stamp, manifest = newest
    items = []
    age = age_hours(manifest, now)
    if age > max_age_h:
        items.append(DriftItem("runtime", CHECK, f"the newest backup is {age:.0f} h old (at most {max_age_h} h)",
                               [where, "see the backup timer's journal: `journalctl -u gpufleet-backup`"]))

    backed_up = {name: entry["rows"] for name, entry in manifest["collections"].items()}
    dropped = dropped_rows(backed_up, rows_now())
    for name, (before, after) in sorted(dropped.items()):
        items.append(DriftItem("runtime", CHECK, f"rows dropped since the last backup: {name} has {after}, "
                                                 f"{before} in {stamp}",
                               ["restore with `gpufleet restore INVENTORY --from " + where + " --replace` "
                                "if the rows were not meant to go"]))
    return items


def data_tier(host, settings, fleet, inventory: str) -> list[DriftItem]:
    """The backup findings for the fleet's Milvus host (every other host: none)."""
    db = fleet.vector_db if fleet is not None else None
    if db is None or db.name != host.name or settings.milvus_backup_max_age_h is None:
        return []

    def rows_now() -> dict[str, int]:
        from operations.port_forward import forwarded

        try:
            with forwarded(host, db.milvus_address, settings.milvus_port) as port:
                return counts_through(port, settings.milvus_root_secret())
        except (BackupError, OSError) as exc:
            raise NotChecked(f"could not count Milvus's rows: {exc}") from None

    now = datetime.datetime.now(datetime.UTC)
    return findings(inventory, settings.milvus_backup_dir, settings.milvus_backup_max_age_h, rows_now, now,
                    s3_access(settings))
