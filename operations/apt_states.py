"""apt's candidates per host, kept on the control host with the state of apt's inputs they were read in.

Drift's security check asks each host's apt which build of a held distribution package it would
install (operations/facts/apt.py: AptCandidates, ``apt-cache policy``). apt loads its whole package
cache for that: 60-90 ms of the host's CPU with Debian's full lists, every night, for an answer that
changes only when apt's inputs do. So the host first prints a fingerprint of those inputs, one
``find`` over their names, inodes, sizes and modification times, hashed:

* ``/etc/apt`` (sources, preferences and pins, apt.conf, keyrings);
* ``/var/lib/apt/lists`` (the package lists ``apt-get update`` fetches: new files, new inodes);
* ``/var/lib/dpkg/status`` and ``/var/lib/dpkg/arch`` (what is installed, which architectures).

When it is the fingerprint of the answer kept here for the same packages, the host says so and
``apt-cache`` does not run; anything else (an ``apt-get update``, a package installed, a pin
changed, a file touched) runs it again and the new answer is kept. A change that touches none of
these files cannot change a candidate.

The answers live in ``<cache dir>/apt-candidates/<host>.json`` (``$GPUFLEET_CACHE_DIR``, else
``~/.cache/gpufleet``; 0600); deleting the file only makes the next check run ``apt-cache`` again.
An unreadable file counts as empty.

Example (gpufleet/runtime_checks.py)::

    found = host.get_fact(AptCandidates, **AptCandidates.prefetch_kwargs(host.name, {"packages": ["nginx"]}))
    apt_states.remember(host.name, ["nginx"], found)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from operations.fact_prefetch import cache_root, write_cache_file


def cache_file(host_name: str) -> Path:
    return cache_root() / "apt-candidates" / f"{host_name}.json"


def known(host_name: str) -> dict[str, Any] | None:
    """``{"state": fingerprint, "packages": [...], "candidates": {...}}`` from the last read, or None."""
    try:
        data = json.loads(cache_file(host_name).read_text())
    except (OSError, ValueError):
        return None
    if (not isinstance(data, dict) or not isinstance(data.get("state"), str)
            or not isinstance(data.get("packages"), list) or not isinstance(data.get("candidates"), dict)):
        return None
    return {"state": data["state"], "packages": data["packages"], "candidates": data["candidates"]}


def remember(host_name: str, packages: list[str], found: dict[str, Any]) -> None:
    """Keep an AptCandidates answer (one that came with the state of apt's inputs) for the next read."""
    if not found.get("state"):
        return
    kept = {"state": found["state"], "packages": sorted(packages), "candidates": found["candidates"]}
    if kept == known(host_name):
        return
    try:
        write_cache_file(cache_file(host_name), json.dumps(kept, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass  # a read-only home only costs speed
