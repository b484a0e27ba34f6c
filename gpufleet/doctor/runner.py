"""`gpufleet doctor` end to end: connect to the GPU nodes, read each (evidence), judge it (rules).

Exit codes, as `gpufleet drift`: 0 every node healthy, 2 some node has findings, 1 some node
could not be (fully) checked: unreachable, or a read failed or timed out. The nodes that were
read are still judged and reported.

Only GPU nodes (group ``gpu_nodes``) are diagnosed; other hosts the ``--limit`` selects are left
alone (an unreachable load balancer does not fail a doctor run).

Example::

    run = diagnose("inventory/prod.py", limit=("gpu-node-03",))
    run.exit_code, [f.id for n in run.nodes for f in n.diagnosis.findings]
    # (2, ['driver.reboot-pending'])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gpufleet.doctor.rules import Diagnosis, judge


@dataclass
class NodeResult:
    host: str
    evidence: dict[str, Any] = field(default_factory=dict)
    diagnosis: Diagnosis | None = None
    error: str | None = None  # why the node was not (fully) checked

    @property
    def checked(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        d = self.diagnosis or Diagnosis(self.host)
        return {"host": self.host, "checked": self.checked, "error": self.error, "healthy": self.checked and not d.findings,
                "findings": [f.as_dict() for f in d.findings], "notes": list(d.notes),
                "read": self.evidence.get("read")}


@dataclass
class DoctorRun:
    nodes: list[NodeResult]

    @property
    def exit_code(self) -> int:
        if any(not n.checked for n in self.nodes):
            return 1
        return 2 if any(n.diagnosis and n.diagnosis.findings for n in self.nodes) else 0

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.exit_code == 0, "exit_code": self.exit_code,
                "unhealthy": [n.host for n in self.nodes if n.diagnosis and n.diagnosis.findings],
                "unchecked": [n.host for n in self.nodes if not n.checked],
                "nodes": [n.as_dict() for n in self.nodes]}


def result_of(host: str, evidence: dict[str, Any]) -> NodeResult:
    """Judge one node's evidence; a failed read makes the node unchecked but keeps what was read."""
    read = evidence.get("read") or {}
    error = "; ".join(read.get("errors") or []) or None
    diagnosis = judge(evidence) if "gpus" in evidence else Diagnosis(host)
    return NodeResult(host, evidence, diagnosis, error)


def read_fleet(inventory_path: str, limit=(), overrides: dict[str, Any] | None = None):
    """``(fleet, {host: evidence or Exception}, [unreachable GPU nodes])`` over SSH."""
    from gpufleet.doctor.evidence import read_node
    from gpufleet.remote import connected, run_parallel

    with connected(inventory_path, limit, overrides) as (state, fleet, reachable, unreachable):
        nodes = [h for h in reachable if fleet.hosts[h.name].is_gpu_node]
        results = run_parallel(state, nodes, lambda h: read_node(h, fleet.hosts[h.name]))
        lost = [h.name for h in unreachable if fleet.hosts[h.name].is_gpu_node]
    return fleet, results, lost


def diagnose(inventory_path: str, limit=(), overrides: dict[str, Any] | None = None):
    """``(DoctorRun, fleet)`` for the GPU nodes of an inventory (see the module docstring)."""
    fleet, results, unreachable = read_fleet(inventory_path, limit, overrides)
    nodes = [NodeResult(name, error="unreachable over SSH") for name in unreachable]
    for name, evidence in results.items():
        if isinstance(evidence, Exception):
            nodes.append(NodeResult(name, error=f"could not read: {type(evidence).__name__}: {evidence}"))
        else:
            nodes.append(result_of(name, evidence))
    return DoctorRun(sorted(nodes, key=lambda n: n.host)), fleet
