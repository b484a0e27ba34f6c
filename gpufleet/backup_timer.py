"""The nightly Milvus backup as a systemd timer on the control host, and the metrics each run leaves.

The service runs ``gpufleet backup INVENTORY --keep N --prometheus FILE`` from this checkout, into
the fleet's ``milvus_backup_dir`` as it is set when the timer runs (``--to`` only where the operator
named another location at install: drift then looks in ``milvus_backup_dir`` still, so set both). Each
run writes node_exporter textfile metrics: when the last backup succeeded, the rows of each
collection, and whether a collection has fewer rows than a kept backup has (exit 2: the backup
is kept, no older one is removed, and the drop is for a person to look at). Alert rules in
files/prometheus/alerts.yml read them (MilvusBackupStale, MilvusRowsDropped).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from gpufleet.control_timer import install_units, service_unit, timer_unit

UNIT = "gpufleet-backup"


def units(inventory: str, on_calendar: str, backup_dir: str | None, keep: int, textfile_dir: str) -> dict[str, str]:
    gpufleet_bin = Path(sys.executable).with_name("gpufleet")
    command = [str(gpufleet_bin), "backup", inventory, *(["--to", backup_dir] if backup_dir else []),
               "--keep", str(keep), "--prometheus", f"{textfile_dir}/gpufleet_milvus_backup.prom"]
    service = service_unit("gpufleet backup install-timer", f"gpufleet nightly Milvus backup ({inventory})", command,
                           "backed up, but a collection has fewer rows than in the previous backup: the metrics say so.")
    timer = timer_unit("gpufleet backup install-timer", "Back up the fleet's Milvus nightly", on_calendar)
    return {f"{UNIT}.service": service, f"{UNIT}.timer": timer}


def install(inventory: str, on_calendar: str = "*-*-* 02:00:00", unit_dir: str = "/etc/systemd/system",
            backup_dir: str | None = None, keep: int = 7,
            textfile_dir: str = "/var/lib/prometheus/node-exporter", enable: bool = True) -> list[str]:
    return install_units(units(inventory, on_calendar, backup_dir, keep, textfile_dir), f"{UNIT}.timer", unit_dir, enable)


def write_metrics(path: str, rows: dict[str, int], dropped: dict[str, tuple[int, int]], now: float | None = None) -> None:
    """node_exporter textfile metrics of a successful backup (written atomically, world-readable: no secrets)."""
    from prometheus_client import CollectorRegistry, Gauge

    from gpufleet.control_timer import write_textfile

    registry = CollectorRegistry()
    Gauge("gpufleet_milvus_backup_last_success_timestamp_seconds", "When the last Milvus backup finished.",
          registry=registry).set(now or time.time())
    counts = Gauge("gpufleet_milvus_backup_rows", "Rows of each collection in the last backup.", ["collection"],
                   registry=registry)
    drops = Gauge("gpufleet_milvus_backup_rows_dropped", "1 when a collection has fewer rows than a kept backup "
                  "has.", ["collection"], registry=registry)
    for name, n in rows.items():
        counts.labels(collection=name).set(n)
        drops.labels(collection=name).set(1 if name in dropped else 0)
    for name in dropped.keys() - rows.keys():  # a collection that is gone altogether
        drops.labels(collection=name).set(1)
    write_textfile(registry, path)
