"""Install Debian packages at exact versions, held or not, in one idempotent step."""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import operation

from operations.facts.apt import PackageStates

APT_GET = (
    "DEBIAN_FRONTEND=noninteractive apt-get -y -q "
    '-o Dpkg::Options::="--force-confdef" -o Dpkg::Options::="--force-confold"'
)


def _plan(wanted: dict[str, str | None], states: dict[str, dict], hold: bool):
    install = []
    for name, version in wanted.items():
        current = states.get(name, {}).get("version")
        if current is None or (version is not None and current != version):
            install.append(f"{name}={version}" if version else name)
    held = {n for n, s in states.items() if s.get("held")}
    to_hold = sorted(n for n in wanted if n not in held) if hold else []
    return install, to_hold


@operation()
def packages(packages: dict[str, str | None] | list[str], hold: bool = False, update: bool = True):
    """
    Make packages installed, at an exact version where one is given, and optionally held.

    + packages: package names, or ``{name: exact version or None}``
    + hold: ``apt-mark hold`` them, so no upgrade (manual or unattended) moves them
    + update: run ``apt-get update`` before installing (only when something is installed)

    Nothing runs when every package is already at its version (and held, if asked): the
    package index is refreshed only when a package must be installed, so a converged host sees
    no change. A wrong version is replaced, downgrades and held packages included.

    **Example:**

    .. code:: python

        apt.packages(
            name="Pin NCCL on the host",
            packages={"libnccl2": "2.27.7-1+cuda12.9", "libnccl-dev": "2.27.7-1+cuda12.9"},
            hold=True,
        )
    """
    wanted = dict.fromkeys(packages) if isinstance(packages, list) else dict(packages)
    states = host.get_fact(PackageStates, packages=sorted(wanted))
    install, to_hold = _plan(wanted, states, hold)
    if not install and not to_hold:
        host.noop(f"{', '.join(sorted(wanted))} installed{' and held' if hold else ''}")
        return
    if install:
        if update:
            yield f"{APT_GET} update"
        yield (f"{APT_GET} install --no-install-recommends --allow-downgrades --allow-change-held-packages "
               + " ".join(shlex.quote(p) for p in install))
    if to_hold:
        yield "apt-mark hold " + " ".join(shlex.quote(p) for p in to_hold)
