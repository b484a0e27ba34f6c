"""What deploy.py needs from the library: the validated settings of the host being deployed.

The whole inventory is validated once and a bad inventory stops the deploy everywhere, before any
host is touched. pyinfra connects to every host *before* it executes deploy.py, so the check
runs twice over:

- :func:`gate_before_connect`, installed by the repository's config.py (which pyinfra loads from
  the working directory before the inventory), validates when pyinfra is about to connect: with
  bad data no host is contacted at all;
- deploy.py calls :func:`fleet_for` first: the same validation (cached per inventory), for runs
  that did not load config.py (``--config other.py``, or pyinfra run from another directory,
  which is refused there since group_data/ would be missing). No operation is added for any host.
"""

from __future__ import annotations

from pathlib import Path

from pyinfra import logger
from pyinfra.api.exceptions import PyinfraError

from gpufleet.fleet import GROUP_DATA, Fleet, fleet_from_inventory
from gpufleet.settings import HostSettings, SettingsError, SettingsIssue, format_issues

# id(inventory) -> (the inventory, its result). The object is kept with its result: an id can be
# reused once an inventory is gone (several in-process runs), and a stale fleet must never match.
_validated: dict[int, tuple[object, Fleet | SettingsError]] = {}


class InventoryDataError(PyinfraError):
    """The inventory's data is invalid; nothing has been changed on any host."""


def _validate(inventory) -> Fleet | SettingsError:
    state = getattr(inventory, "state", None)
    cwd = getattr(state, "cwd", None)
    if cwd and not (Path(cwd) / GROUP_DATA).is_dir():
        return SettingsError([SettingsIssue("(command line)", GROUP_DATA, cwd,
                                            "run pyinfra from the repository root: no group_data/ here, so every "
                                            "host would be deployed without its group data")])
    try:
        return fleet_from_inventory(inventory)
    except SettingsError as exc:
        return exc


def fleet_for(inventory) -> Fleet:
    """The validated fleet, or InventoryDataError (every problem, as a table) before anything runs."""
    key = id(inventory)
    cached = _validated.get(key)
    if cached is None or cached[0] is not inventory:
        result = _validate(inventory)
        _validated[key] = (inventory, result)
        if isinstance(result, Fleet) and result.warnings:
            logger.warning("gpufleet: allowed, but not for production:\n" + format_issues(result.warnings))
    result = _validated[key][1]
    if isinstance(result, SettingsError):
        raise InventoryDataError(
            "invalid inventory data; no host was changed. Fix these and run again:\n" + str(result)
        )
    return result


def host_settings(fleet: Fleet, host) -> HostSettings:
    """The host's validated settings; a host the validated fleet does not hold stops the deploy."""
    try:
        return fleet.hosts[host.name].settings
    except KeyError:
        raise InventoryDataError(
            f"{host.name} is not in the validated inventory; no host was changed. "
            "run pyinfra from the repository root (group_data/ beside deploy.py)") from None


def gate_before_connect(state) -> None:
    """Make pyinfra's CLI validate the inventory before it connects; called by the repository's config.py.

    pyinfra's CLI has no hook between loading the inventory and connecting (state callbacks are
    reset by ``State.init``, and ``host_before_connect`` runs inside each host's greenlet), so this
    wraps two things of pyinfra 3.10 (pinned exactly in pyproject.toml; tests/unit/
    test_bad_input_catalog.py fails if either stops working):

    - ``state.set_stage``: entering ``StateStage.Connect`` first runs :func:`fleet_for` on the
      loaded inventory. ``debug-inventory`` never enters Connect and still works on bad data;
    - ``pyinfra_cli.cli.make_inventory``: a Python error in an inventory or group_data file becomes
      one line naming the file and the line, instead of a traceback and a pyinfra-debug.log.
    """
    import pyinfra_cli.cli as pyinfra_cli
    from pyinfra.api.state import StateStage

    set_stage = state.set_stage

    def set_stage_validated(stage):
        if stage == StateStage.Connect and getattr(state, "inventory", None) is not None:
            fleet_for(state.inventory)
        set_stage(stage)

    state.set_stage = set_stage_validated
    if not getattr(pyinfra_cli.make_inventory, "gpufleet_gate", False):
        pyinfra_cli.make_inventory = _one_line_python_errors(pyinfra_cli.make_inventory)


def _one_line_python_errors(make_inventory):
    from pyinfra_cli.exceptions import UnexpectedExternalError

    from gpufleet.fleet import python_error

    def make_inventory_gated(*args, **kwargs):
        try:
            return make_inventory(*args, **kwargs)
        except (SyntaxError, UnexpectedExternalError) as exc:
            raise InventoryDataError("invalid inventory; no host was contacted:\n"
                                     + format_issues([python_error(exc)])) from None

    make_inventory_gated.gpufleet_gate = True
    return make_inventory_gated
