"""The fleet as the repository declares it: every host's validated settings and every replica.

The inventory is loaded with pyinfra's own loader (inventory file + group_data + ``--data``
overrides), so the data gpufleet validates is exactly the data a deploy would see.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpufleet.settings import HostSettings, Replica, SettingsError, SettingsIssue, validate_host_data

GPU_GROUP = "gpu_nodes"
LB_GROUP = "lb"


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


@dataclass
class Fleet:
    hosts: dict[str, FleetHost]
    warnings: list[SettingsIssue] = field(default_factory=list)

    @property
    def nodes(self) -> list[FleetHost]:
        return [h for h in self.hosts.values() if h.is_gpu_node]

    @property
    def load_balancers(self) -> list[FleetHost]:
        return [h for h in self.hosts.values() if h.is_lb]

    @property
    def replicas(self) -> list[Replica]:
        """Every load-balanced replica, named ``<node>-<replica>``, in inventory order."""
        return [r for node in self.nodes for r in replicas_of(node)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "nodes": [
                {
                    "name": n.name,
                    "address": n.address,
                    "groups": n.groups,
                    "gpu_count": n.settings.gpu_count,
                    "gpu_name": n.settings.gpu_name,
                    "replicas": [r.name for r in replicas_of(n)],
                }
                for n in self.nodes
            ],
            "load_balancers": [{"name": h.name, "address": h.address, "lb_port": h.settings.lb_port}
                               for h in self.load_balancers],
            "replicas": [r.model_dump() for r in self.replicas],
        }


def replicas_of(host: FleetHost) -> list[Replica]:
    return [
        r.model_copy(update={"name": f"{host.name}-{r.name}", "node": host.name, "address": host.address})
        for r in host.settings.replicas_declared()
    ]


def parse_data_overrides(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``key=value`` strings parsed exactly as pyinfra's ``--data`` does."""
    from pyinfra_cli.util import parse_cli_arg

    overrides = {}
    for pair in pairs:
        if "=" not in pair:
            raise SettingsError([SettingsIssue("(command line)", "--data", pair, "key=value")])
        key, value = pair.split("=", 1)
        overrides[key] = parse_cli_arg(value)
    return overrides


def load_inventory(inventory_path: str | os.PathLike, overrides: dict[str, Any] | None = None, cwd: str | None = None):
    """A pyinfra Inventory, loaded as ``pyinfra INVENTORY ...`` would load it (group_data from cwd)."""
    from pyinfra.api import State
    from pyinfra.context import ctx_state
    from pyinfra_cli.inventory import make_inventory

    path = Path(inventory_path)
    if not str(inventory_path).startswith("@") and not path.is_file():
        raise SettingsError([SettingsIssue("(command line)", "INVENTORY", str(path), "an inventory file that exists")])
    state = State()
    with ctx_state.use(state):
        return make_inventory(str(path), override_data=overrides or {}, cwd=cwd or os.getcwd())


def fleet_from_inventory(inventory) -> Fleet:
    """Validate every host of a loaded inventory; raise SettingsError listing every error."""
    hosts: dict[str, FleetHost] = {}
    issues: list[SettingsIssue] = []
    warnings: list[SettingsIssue] = []
    for host in inventory:
        data = host.data.dict()
        settings, found = validate_host_data(host.name, data)
        issues.extend(i for i in found if i.severity == "error")
        warnings.extend(i for i in found if i.severity == "warning")
        if settings is not None:
            hosts[host.name] = FleetHost(host.name, list(host.groups), settings, data)
    issues.extend(_fleet_problems(hosts))
    if issues:
        raise SettingsError(issues + warnings)
    return Fleet(hosts, warnings)


def _fleet_problems(hosts: dict[str, FleetHost]) -> list[SettingsIssue]:
    """Checks that span hosts: replica names and (address, port) pairs are unique fleet-wide."""
    problems = []
    seen_names: dict[str, str] = {}
    for host in hosts.values():
        if not host.is_gpu_node:
            continue
        for replica in replicas_of(host):
            if replica.name in seen_names:
                problems.append(SettingsIssue(host.name, "vllm_replicas", replica.name,
                                              f"a replica name unique in the fleet (also on {seen_names[replica.name]})"))
            seen_names[replica.name] = host.name
        if host.settings.gpu_count == 0:
            problems.append(SettingsIssue(host.name, "gpu_count", 0, f">= 1 for a host in group {GPU_GROUP}"))
    return problems


def load_fleet(inventory_path: str | os.PathLike, overrides: dict[str, Any] | None = None, cwd: str | None = None) -> Fleet:
    return fleet_from_inventory(load_inventory(inventory_path, overrides, cwd))
