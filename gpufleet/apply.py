"""Run single operations on some hosts of an inventory through pyinfra's API (control side).

The rollout uses it for the steps that are not the node's deploy: drain and undrain on the load
balancers, a readiness probe on a node. The operations are the same ones deploy.py runs; only
which hosts run them, and when, differs. Unreachable hosts and failed operations are reported
per host, never raised, so that the caller decides what a failure means.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyinfra.api import Config, State
from pyinfra.api.connect import connect_all
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops
from pyinfra.context import ctx_state

from gpufleet import PROJECT_ROOT
from gpufleet.fleet import load_inventory
from gpufleet.remote import close_connections


def run_on(inventory_path: str, host_names: list[str], op, kwargs_of: Callable[[str], dict[str, Any]],
           overrides: dict[str, Any] | None = None, connect_timeout: int = 10,
           then: tuple[tuple[Any, Callable[[str], dict[str, Any]]], ...] = ()) -> dict[str, str | None]:
    """Run ``op(**kwargs_of(host))`` on each named host, then each ``(op, kwargs_of)`` of ``then``
    in order (one connection); ``{host: None (ok) or why it failed}``."""
    inventory = load_inventory(inventory_path, overrides, cwd=str(PROJECT_ROOT))
    wanted = [inventory.get_host(name) for name in host_names]
    state = State(check_for_changes=False)
    state.cwd = str(PROJECT_ROOT)
    state.init(inventory, Config(CONNECT_TIMEOUT=connect_timeout, FAIL_PERCENT=None), initial_limit=wanted)
    results: dict[str, str | None] = {}
    with ctx_state.use(state):
        try:
            connect_all(state)
        except PyinfraError:
            pass  # nothing reachable: reported below
        reachable = [h for h in wanted if h.connected]
        results.update({h.name: "unreachable over SSH" for h in wanted if not h.connected})
        try:
            for h in reachable:
                try:
                    for each_op, each_kwargs_of in ((op, kwargs_of), *then):
                        add_op(state, each_op, host=h, **each_kwargs_of(h.name))
                except PyinfraError as exc:  # an operation that refuses (OperationError) while planned
                    results[h.name] = str(exc)
                    state.fail_hosts({h})
            if any(h not in state.failed_hosts for h in reachable):
                run_ops(state)
        except PyinfraError as exc:
            for h in reachable:
                results.setdefault(h.name, str(exc))
        finally:
            close_connections(state)
    for h in reachable:
        if h.name not in results:
            results[h.name] = _failure(state, h)
    return results


def _failure(state: State, host) -> str | None:
    if host not in state.failed_hosts:
        return None
    return "an operation failed (see the output above)"
