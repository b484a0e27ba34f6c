"""One thing a host does differently from the repository: what drift reports, and what each
check (gpufleet/drift.py's plan, gpufleet/runtime_checks.py) returns."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DriftItem:
    kind: str  # "plan" | "runtime" | "security" (a distribution package behind its archive's build)
    check: str  # operation name, or runtime check name
    cause: str
    details: list[str] = field(default_factory=list)
