"""Run deploy.py through pyinfra's API as a plan (Prepare only) or for real, host failures isolated.

`pyinfra --dry` exits 0 with pending changes and its JSON has no per-host failures, so the
checking commands drive the same deploy in-process instead: the inventory and group_data load as
pyinfra's CLI loads them, deploy.py is executed per host exactly as the CLI executes it, and the
resulting per-host operation metadata is read directly. A host that cannot be reached, or whose
deploy code raises while planning, is reported and the others go on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import gevent
import pyinfra
from pyinfra.api import Config, State
from pyinfra.api.connect import connect_all
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operations import run_ops
from pyinfra.api.state import StateStage
from pyinfra.context import ctx_config, ctx_host, ctx_inventory, ctx_state

from gpufleet import PROJECT_ROOT
from gpufleet.fleet import Fleet, fleet_from_inventory, load_inventory
from gpufleet.remote import close_connections, select
from operations.fact_prefetch import READS_KIND_ATTRIBUTE, something_ran, watch_what_runs
from operations.serving_gate import ServingInterruption

DEPLOY_FILE = "deploy.py"


@dataclass
class PlannedOp:
    name: str
    will_change: bool
    conditional: bool  # gated by `_if`: runs only if another operation changes
    op_hash: str


@dataclass
class Plan:
    state: State
    fleet: Fleet
    hosts: list  # pyinfra Host objects that were planned
    unreachable: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # host -> why planning failed
    # host -> why the deploy itself would stop there (an operation refused, e.g. a daemon-reload
    # under running GPU containers): the host was read and is drifted, not unchecked.
    refusals: dict[str, str] = field(default_factory=dict)
    # host -> the refusal, when it was because live replicas would be interrupted
    # (operations/serving_gate.ServingInterruption: what and which kind of change).
    interruptions: dict[str, Any] = field(default_factory=dict)

    def ops(self, host) -> list[PlannedOp]:
        out = []
        for op_hash in host.op_hash_order:
            data = self.state.ops[host].get(op_hash)
            if data is None:
                continue
            name = sorted(self.state.op_meta[op_hash].names)[0]
            conditional = data.global_arguments.get("_if") not in (None, [])
            out.append(PlannedOp(name, bool(data.operation_meta._maybe_is_change), conditional, op_hash))
        return out

    def commands(self, host, op_hash: str) -> list:
        """The commands an operation would run now (its generator run again, facts re-read)."""
        data = self.state.ops[host][op_hash]
        with ctx_state.use(self.state), ctx_host.use(host):
            return list(data.command_generator())


@contextmanager
def _cli_mode():
    # deploy.py is CLI-style code (operations called at module level); pyinfra orders such
    # operations by call site only in CLI mode, so the same deploy must load the same way here.
    previous = pyinfra.is_cli
    pyinfra.is_cli = True
    try:
        yield
    finally:
        pyinfra.is_cli = previous


@contextmanager
def planned(inventory_path: str, limit=(), overrides: dict[str, Any] | None = None,
            check_for_changes: bool = True, connect_timeout: int = 10, reads_kind: str | None = None) -> Iterator[Plan]:
    """Connect, load deploy.py for every reachable host (Prepare), yield the Plan, disconnect.

    ``reads_kind``: the kind of run, whose own recent runs' reads the prefetch reads (``"drift"``
    for a drift check, which also asks the runtime reads; default: a deploy; operations/fact_prefetch.py).
    """
    cwd = str(PROJECT_ROOT)
    inventory = load_inventory(inventory_path, overrides, cwd=cwd)
    fleet = fleet_from_inventory(inventory)  # bad data stops here, before any connection
    wanted = select(inventory, limit)
    state = State(check_for_changes=check_for_changes)
    state.cwd = cwd
    if reads_kind is not None:
        setattr(state, READS_KIND_ATTRIBUTE, reads_kind)
    config = Config(CONNECT_TIMEOUT=connect_timeout, FAIL_PERCENT=None)
    state.init(inventory, config, initial_limit=wanted)
    with ctx_state.use(state), ctx_inventory.use(inventory), ctx_config.use(config), _cli_mode():
        state.set_stage(StateStage.Connect)
        try:
            connect_all(state)
        except PyinfraError:
            pass  # no host reachable: reported below
        reachable = [h for h in wanted if h.connected]
        plan = Plan(state, fleet, reachable, unreachable=[h.name for h in wanted if not h.connected])
        state.set_stage(StateStage.Prepare)
        failures = _load_deploy(state, reachable)
        plan.refusals = {n: str(exc) for n, (refused, exc) in failures.items() if refused}
        plan.errors = {n: _message(exc) for n, (refused, exc) in failures.items() if not refused}
        plan.interruptions = {n: exc for n, (_, exc) in failures.items() if isinstance(exc, ServingInterruption)}
        plan.hosts = [h for h in reachable if h.name not in plan.errors]
        try:
            yield plan
        finally:
            state.set_stage(StateStage.Disconnect)
            close_connections(state)  # releases each host's deploy lock (operations/deploy_lock.py)


def _load_deploy(state: State, hosts: list) -> dict[str, tuple[bool, Exception]]:
    """Execute deploy.py once per host, as pyinfra's CLI does, keeping each host's failure apart.

    Returns {host: (refused, exception)}: refused is True when an operation raised OperationError
    (the deploy would stop on that host), False for anything else (could not plan it).
    """
    from pyinfra.api.exceptions import OperationError
    from pyinfra_cli.util import exec_file

    from operations.deploy_lock import DeployLockHeld

    path = os.path.join(state.cwd, DEPLOY_FILE)
    state.current_deploy_filename = path

    def load(host):
        try:
            with ctx_config.use(state.config.copy()), ctx_host.use(host):
                exec_file(path)
            return None
        except DeployLockHeld as exc:  # another run holds the host: not planned, so not checked
            return False, exc
        except OperationError as exc:
            return True, exc
        except Exception as exc:  # noqa: BLE001 - one host's failure must not stop the others
            return False, exc

    greenlets = {host.name: state.pool.spawn(load, host) for host in hosts}
    gevent.joinall(list(greenlets.values()))
    return {name: g.value for name, g in greenlets.items() if g.value}


def _message(exc: Exception) -> str:
    # pyinfra's CLI wraps an error raised by a deploy file in UnexpectedExternalError, whose str()
    # itself raises (it has no .message): name the error inside it (as fleet.python_error does).
    exc = getattr(exc, "exception", exc)
    return f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}"


def execute(plan: Plan, host_names: list[str]) -> dict[str, bool]:
    """Run the planned deploy on some hosts only (`drift --fix`, a rollout's node); {host: succeeded}.

    A host whose deploy refused while it was planned (the serving gate, a held lock) is never
    executed: its plan stops where it refused, and running the part before would half-apply it.
    """
    state = plan.state
    keep = {h for h in plan.hosts if h.name in host_names and h.name not in plan.refusals}
    for host in list(state.active_hosts):
        if host not in keep:
            state.active_hosts.discard(host)
    if not keep:
        return {name: False for name in host_names}
    watch_what_runs(state)  # what a skipped operation asks: did anything run before it?
    for host in keep:
        _skip_unchanged_prefix(plan, host)
    with ctx_state.use(state), _cli_mode():
        state.set_stage(StateStage.Execute)
        try:
            run_ops(state)
        except PyinfraError:
            pass  # "No hosts remaining!" when every kept host failed: reported per host below
    result = {h.name: h not in state.failed_hosts for h in keep}
    return {**{name: False for name in host_names if name not in result}, **result}


def _unless_anything_ran(state, generator):
    """The operation's generator, run only if an operation on some host yielded a command before
    it (fact_prefetch.something_ran)."""
    def run_if_anything_ran():
        return generator() if something_ran(state) else iter(())
    return run_if_anything_ran


def _skip_unchanged_prefix(plan: Plan, host) -> int:
    """Execute from the host's first changing operation on; how many were skipped.

    pyinfra 3 runs every operation's generator again at execution (its facts read again), so
    that an operation sees what the operations before it changed. The operations *before the
    first change* have nothing before them that changed on their host: their plan, made moments
    ago, is what they would find, and they yield nothing (pyinfra 2 executed every plan this way).
    A rollout executes while the node is drained: reading those facts again cost a few seconds of
    every node's time out of rotation. An operation gated by ``_if`` in that prefix depends on
    earlier operations only, none of which changed while nothing ran, so it would not run either.
    Skipped operations report "No changes", and ``did_change()`` is False for them, as it would be.

    Another host's operations may change what such an operation waits for (a maintenance window's
    ``drift --fix`` of the Milvus host and an app node: Milvus recreated, then the app's ``ready``
    on the other host): so once an operation on any host has yielded a command, a skipped operation
    runs its generator after all, as pyinfra would (and an ``_if`` on an earlier one that now
    changed holds).
    """
    if not plan.state.check_for_changes:
        return 0  # planned without reading changes (bench's converge): every will_change is unknown
    skipped = 0
    for op in plan.ops(host):
        if op.will_change and not op.conditional:
            break
        op_data = plan.state.ops[host][op.op_hash]
        op_data.command_generator = _unless_anything_ran(plan.state, op_data.command_generator)
        skipped += 1
    return skipped
