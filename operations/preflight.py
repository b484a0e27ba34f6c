"""Checks a host must pass before anything is installed on it."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import OperationError, operation
from pyinfra.facts.server import LinuxDistribution


def _os_label(distro: dict) -> str:
    name = distro.get("name") or "unknown"
    major, minor = distro.get("major"), distro.get("minor")
    if name == "Ubuntu" and major is not None:
        return f"Ubuntu {major}.{minor or 0:02d}"
    return f"{name} {major}" if major is not None else name


@operation()
def supported_os(supported: list[str]):
    """
    Stop the deploy on this host unless it runs a supported operating system.

    + supported: labels such as ``"Debian 12"`` or ``"Ubuntu 24.04"``

    Changes nothing; fails the host with the OS it found and the list it expected.

    **Example:**

    .. code:: python

        preflight.supported_os(name="Supported OS", supported=["Debian 12", "Ubuntu 24.04"])
    """
    label = _os_label(host.get_fact(LinuxDistribution))
    if label not in supported:
        raise OperationError(f"{label} is not supported (expected one of: {', '.join(supported)})")
    host.noop(f"{label} is supported")
    return
    yield  # pragma: no cover - makes this a generator, as pyinfra expects of an operation
