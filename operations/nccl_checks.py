"""The NCCL each vLLM container run loads, remembered on the control host between checks.

Drift asks every running replica which NCCL its engine loaded (operations/facts/docker.py:
VllmNcclVersions, a ``docker exec`` of the image's check in each replica, ~0.3 s of the node's CPU
each). The answer cannot change while that container runs: its processes mapped the library when
they started. So the control host keeps each answer under the container's key (container id,
image id, start time) and passes them to the next read, which runs the check only in a container
it has no answer for: a new container, or one that was restarted. A replica is checked once per
run of its container, not once per night.

The answers live in ``<cache dir>/nccl-checks/<host>.json`` (``$GPUFLEET_CACHE_DIR``, else
``~/.cache/gpufleet``; 0600), only the containers running at the last read; deleting the file only
makes the next check run inside every replica again. An unreadable file counts as empty.

The prefetch (operations/fact_prefetch.py) reads VllmNcclVersions with the answers kept *now*
(the fact's ``prefetch_kwargs``), not with those of the run that remembered the read: so the
check of a new container runs once, in the run that finds it.

Example::

    found = host.get_fact(VllmNcclVersions, **VllmNcclVersions.prefetch_kwargs(host.name))
    nccl_checks.remember(host.name, found)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from operations.fact_prefetch import cache_root, write_cache_file


def cache_file(host_name: str) -> Path:
    return cache_root() / "nccl-checks" / f"{host_name}.json"


def known(host_name: str) -> dict[str, str]:
    """``{container key: NCCL version}`` from the last read on this host."""
    try:
        data = json.loads(cache_file(host_name).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str) and v}


def remember(host_name: str, found: dict[str, Any]) -> None:
    """Keep the answers of a VllmNcclVersions read (containers with a version only)."""
    keys, versions = found.get("keys") or {}, found.get("containers") or {}
    answers = {keys[name]: version for name, version in versions.items() if version and name in keys}
    if answers == known(host_name):
        return
    try:
        write_cache_file(cache_file(host_name), json.dumps(answers, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass  # a read-only home only costs speed
