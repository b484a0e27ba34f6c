"""One host of the fleet as the repository declares it: its role groups, settings and replicas.

Shared by gpufleet/fleet.py (which loads and validates the fleet) and gpufleet/fleet_checks.py
(the checks across hosts that the loading runs), so neither imports the other's back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gpufleet.settings import HostSettings
from gpufleet.settings_vllm import Replica

GPU_GROUP = "gpu_nodes"
LB_GROUP = "lb"
VECTOR_DB_GROUP = "vector_db"  # the Milvus host: a GPU node or a host of its own
APP_MEMBER_SUFFIX = "rag-app"  # a node's app behind the load balancers: ``<node>-rag-app``


@dataclass
class FleetHost:
    name: str
    groups: list[str]
    settings: HostSettings
    data: dict[str, Any]  # the raw resolved data, pyinfra's keys included

    @property
    def address(self) -> str:
        return self.settings.private_address or self.name

    @property
    def is_gpu_node(self) -> bool:
        return GPU_GROUP in self.groups

    @property
    def is_lb(self) -> bool:
        return LB_GROUP in self.groups

    @property
    def is_vector_db(self) -> bool:
        return VECTOR_DB_GROUP in self.groups

    def reached_at(self, bind: str | None) -> str:
        """Where other hosts reach a service of this host bound to ``bind``: that address, unless it
        is unset or every interface (then the host's private address)."""
        return bind if bind not in (None, "0.0.0.0") else self.address

    @property
    def milvus_address(self) -> str:
        """Where the other hosts reach this host's Milvus."""
        return self.reached_at(self.settings.milvus_bind_address)

    @property
    def metrics_address(self) -> str:
        """Where Prometheus reaches this host's exporters (node_exporter, DCGM exporter, gpu_monitor)."""
        return self.reached_at(self.settings.metrics_listen_address)

    @property
    def app_member(self) -> str | None:
        """The name of this node's RAG app behind the load balancers, or None (no app here)."""
        return f"{self.name}-{APP_MEMBER_SUFFIX}" if self.is_gpu_node and self.settings.app_image else None


def replicas_of(host: FleetHost) -> list[Replica]:
    return [
        r.model_copy(update={"name": f"{host.name}-{r.name}", "node": host.name, "address": host.address})
        for r in host.settings.replicas_declared()
    ]
