"""Counters that only grow, remembered between drift runs so that each run reports what is new.

The kernel's XID events count since boot and Docker's RestartCount since a container's creation:
reported as totals, one XID or one restart months ago would keep a host "drifted" forever.

Decision: the previous run's readings live on the **control host**, in one JSON file per
inventory (``$GPUFLEET_STATE_DIR/drift/<inventory>-counters.json``, default
``~/.local/state/gpufleet``; the nightly unit passes ``--counters /var/lib/gpufleet/drift/counters.json``),
not on the hosts: drift only reads hosts (a test records every command it sends), and a fresh or
re-imaged host must not carry counters it did not produce. Each run compares with the last run
*that used the same file*, so an operator's ad-hoc run (its own state directory) does not swallow
what the nightly run should report. Per host it keeps the boot id, the XID count and the time since
boot of the last XID seen, and the restart count per container id:

* XIDs: same boot → the events after the last one seen (kernel timestamps, so a ring buffer that
  dropped old lines does not hide new ones); another boot, or no reading yet → all of this boot's;
* restarts: same container id → the restarts since; a new container (recreated) → all of its own.

A reading that could not be taken (kernel log unreadable, Docker down) leaves the old one in place,
and so do the readings of a host whose check raised (gpufleet.drift.check): a reading is kept as
seen only with the result that reported it.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpufleet.private_files import state_root, write_private


def default_path(inventory_path: str) -> Path:
    root = state_root()
    return root / "drift" / f"{Path(inventory_path).stem}-counters.json"


@dataclass
class Seen:
    """One host's readings from the last run (``before``) and this run's (``now``, filled by the checks)."""

    before: dict[str, Any] = field(default_factory=dict)
    now: dict[str, Any] = field(default_factory=dict)


class CounterStore:
    """The counters file: ``load`` before the checks, ``host(name)`` for each, ``save`` after."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self.hosts: dict[str, dict] = {}
        self.seen: dict[str, Seen] = {}
        if self.path and self.path.is_file():
            try:
                self.hosts = json.loads(self.path.read_text()).get("hosts", {})
            except (ValueError, AttributeError):
                self.hosts = {}  # unreadable: every counter starts again (reported as "since boot")

    def host(self, name: str) -> Seen:
        return self.seen.setdefault(name, Seen(before=dict(self.hosts.get(name) or {})))

    def save(self) -> None:
        """Merge this run's readings over the last ones and write the file atomically (0600)."""
        if not self.path:
            return
        for name, seen in self.seen.items():
            if seen.now:
                self.hosts[name] = {**seen.before, **seen.now, "checked_at": time.time()}
        write_private(self.path, json.dumps({"version": 1, "hosts": self.hosts}, indent=1, sort_keys=True))


# ------------------------------------------------------------------------------------- XIDs ------

def new_xids(before: dict, reading: dict) -> tuple[int, list[dict], bool]:
    """(new events, their kept lines, first reading of this boot) for a KernelXids reading.

    >>> r = {"boot_id": "b1", "count": 3, "events": [{"t": 10.0}, {"t": 20.0}, {"t": 30.0}]}
    >>> new_xids({"boot_id": "b1", "xid": {"count": 2, "last_t": 20.0}}, r)
    (1, [{'t': 30.0}], False)
    >>> new_xids({"boot_id": "b0", "xid": {"count": 9, "last_t": 99.0}}, r)[0::2]
    (3, True)
    """
    count, events = reading.get("count") or 0, reading.get("events") or []
    last = before.get("xid") or {}
    if not before or before.get("boot_id") != reading.get("boot_id") or not reading.get("boot_id") or not last:
        return count, events, True
    last_t = last.get("last_t")
    if last_t is not None and events and all(e.get("t") is not None for e in events):
        fresh = [e for e in events if e["t"] > last_t]
        # Every kept line is new: more may have scrolled out of the kept window; the count says how many.
        total = max(len(fresh), count - (last.get("count") or 0)) if len(fresh) == len(events) else len(fresh)
        return total, fresh, False
    total = max(0, count - (last.get("count") or 0))
    return total, events[len(events) - total:] if total else [], False


def xid_record(before: dict, reading: dict) -> dict:
    """What to remember of a KernelXids reading for the next run."""
    events = reading.get("events") or []
    same_boot = before.get("boot_id") == reading.get("boot_id")
    last_t = events[-1].get("t") if events else ((before.get("xid") or {}).get("last_t") if same_boot else None)
    return {"boot_id": reading.get("boot_id"), "xid": {"count": reading.get("count") or 0, "last_t": last_t}}


def summarize_xids(events: list[dict]) -> str:
    """``Xid 79 on 0000:01:00 (x2), Xid 13 on 0000:02:00``."""
    counts = Counter((e.get("code"), e.get("pci")) for e in events)
    return ", ".join(f"Xid {code} on {pci}" + (f" (x{n})" if n > 1 else "") for (code, pci), n in counts.items())


# --------------------------------------------------------------------------------- restarts ------

def new_restarts(before: dict, container_id: str, count: int) -> int:
    """Restarts of this container since the last run (all of them for a container not seen before)."""
    seen = (before.get("restarts") or {}).get(container_id)
    return count - seen if seen is not None and count >= seen else count
