"""What deploy.py needs from the library: the validated settings of the host being deployed.

The whole inventory is validated once, before the first operation is added for any host, and a
bad inventory stops the deploy everywhere: pyinfra runs deploy.py per host, but every host sees
the same result (cached per inventory object).
"""

from __future__ import annotations

from pyinfra.api.exceptions import PyinfraError

from gpufleet.fleet import Fleet, fleet_from_inventory
from gpufleet.settings import HostSettings, SettingsError

_validated: dict[int, Fleet | SettingsError] = {}


class InventoryDataError(PyinfraError):
    """The inventory's data is invalid; nothing has been changed on any host."""


def fleet_for(inventory) -> Fleet:
    key = id(inventory)
    if key not in _validated:
        try:
            _validated[key] = fleet_from_inventory(inventory)
        except SettingsError as exc:
            _validated[key] = exc
    result = _validated[key]
    if isinstance(result, SettingsError):
        raise InventoryDataError(
            "invalid inventory data; no host was changed. Fix these and run again:\n" + str(result)
        )
    return result


def settings_for(inventory, host) -> HostSettings:
    return fleet_for(inventory).hosts[host.name].settings
