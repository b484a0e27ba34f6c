"""The fleet as the repository declares it: every host's validated settings and every replica.

The inventory is loaded with pyinfra's own loader (inventory file + group_data + ``--data``
overrides), so the data gpufleet validates is exactly the data a deploy would see.

group_data/ is read from the working directory, as pyinfra reads it. Run from elsewhere, gpufleet
looks for it above the inventory file (``gpufleet validate ~/gpufleet/inventory/prod.py`` from
any directory finds ~/gpufleet/group_data), and refuses when there is none rather than
validating hosts without their group data. A Python error in an inventory or group_data file is
one line naming the file and the line, not a traceback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpufleet.fleet_checks import inventory_problems
from gpufleet.fleet_host import GPU_GROUP, FleetHost, replicas_of
from gpufleet.settings import SettingsError, SettingsIssue, validate_host_data
from gpufleet.settings_vllm import Replica

GROUP_DATA = "group_data"

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
    def vector_db(self) -> FleetHost | None:
        """The Milvus host every app replica shares (inventory group ``vector_db``; validated: at most one)."""
        return next((h for h in self.hosts.values() if h.is_vector_db), None)

    @property
    def app_members(self) -> list[dict[str, Any]]:
        """Every node's RAG app as a load-balancer member: ``[{"name", "address", "port", "upstream"}]``."""
        return [{"name": n.app_member, "port": n.settings.app_port, "upstream": "rag_app",
                 # Where the app publishes (operations/app.py).
                 "address": n.reached_at(n.settings.app_bind_address)}
                for n in self.nodes if n.app_member]

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
            "vector_db": ({"name": self.vector_db.name, "milvus": f"{self.vector_db.milvus_address}:"
                                                                  f"{self.vector_db.settings.milvus_port}"}
                          if self.vector_db else None),
            "app_members": [m["name"] for m in self.app_members],
            "replicas": [r.model_dump() for r in self.replicas],
        }


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


def project_root(inventory_path: str | os.PathLike, cwd: str) -> str:
    """Where group_data/ is: ``cwd`` (pyinfra's rule), else the nearest directory above the inventory file."""
    if (Path(cwd) / GROUP_DATA).is_dir():
        return cwd
    path = Path(inventory_path)
    if path.is_file():
        for parent in path.resolve().parents:
            if (parent / GROUP_DATA).is_dir():
                return str(parent)
    if str(inventory_path).startswith("@"):
        return cwd  # an ad-hoc target (`gpufleet verify @local`): its data is on the command line
    raise SettingsError([SettingsIssue("(command line)", GROUP_DATA, cwd,
                                       f"a {GROUP_DATA}/ directory in the working directory or above "
                                       f"{inventory_path}: run gpufleet from the repository root")])


def python_error(exc: BaseException) -> SettingsIssue:
    """One line for a Python error in an inventory or group_data file: the file, the line, the error."""
    inner = getattr(exc, "exception", exc)  # pyinfra wraps errors in user code (UnexpectedExternalError)
    filename, line = getattr(exc, "filename", None), None
    if isinstance(inner, SyntaxError):
        filename, line = inner.filename or filename, inner.lineno
    else:
        tb = inner.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == filename:
                line = tb.tb_lineno
            tb = tb.tb_next
    what = f"{type(inner).__name__}: {getattr(inner, 'msg', None) or inner}"
    return SettingsIssue("(file)", f"{filename}:{line}" if line else str(filename), what.splitlines()[0],
                         "a valid Python inventory/group_data file (fix that line)")


def load_inventory(inventory_path: str | os.PathLike, overrides: dict[str, Any] | None = None, cwd: str | None = None):
    """A pyinfra Inventory, loaded as ``pyinfra INVENTORY ...`` would load it (group_data: :func:`project_root`)."""
    from pyinfra.api import State
    from pyinfra.context import ctx_state
    from pyinfra_cli.exceptions import UnexpectedExternalError
    from pyinfra_cli.inventory import make_inventory

    path = Path(inventory_path)
    if not str(inventory_path).startswith("@") and not path.is_file():
        raise SettingsError([SettingsIssue("(command line)", "INVENTORY", str(path), "an inventory file that exists")])
    root = project_root(inventory_path, cwd or os.getcwd())
    state = State()
    with ctx_state.use(state):
        try:
            return make_inventory(str(path), override_data=overrides or {}, cwd=root)
        except (SyntaxError, UnexpectedExternalError) as exc:
            raise SettingsError([python_error(exc)]) from None


def fleet_from_inventory(inventory) -> Fleet:
    """Validate every host of a loaded inventory; raise SettingsError listing every error."""
    hosts: dict[str, FleetHost] = {}
    issues: list[SettingsIssue] = []
    warnings: list[SettingsIssue] = []
    every: list[tuple[str, list[str], dict[str, Any]]] = []
    for host in inventory:
        data = host.data.dict()
        every.append((host.name, list(host.groups), data))
        settings, found = validate_host_data(host.name, data)
        issues.extend(i for i in found if i.severity == "error")
        # A vLLM setting warns where vLLM runs: group data shared with an lb or a Milvus host
        # would say the same thing once more per such host.
        warnings.extend(i for i in found if i.severity == "warning"
                        and (GPU_GROUP in host.groups or not i.key.startswith("vllm_")))
        if settings is not None:
            hosts[host.name] = FleetHost(host.name, list(host.groups), settings, data)
    issues.extend(inventory_problems(every, list(inventory.group_data), hosts))
    if issues:
        raise SettingsError(issues + warnings)
    return Fleet(hosts, warnings)


def load_fleet(inventory_path: str | os.PathLike, overrides: dict[str, Any] | None = None, cwd: str | None = None) -> Fleet:
    return fleet_from_inventory(load_inventory(inventory_path, overrides, cwd))
