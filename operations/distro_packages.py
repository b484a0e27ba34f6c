"""Packages from the distribution's own archive, at a security floor rather than an exact build.

Why not an exact pin: a Debian (or Ubuntu) mirror keeps only the newest build of each suite. The
day Debian publishes ``nginx 1.22.1-9+deb12u12`` to bookworm-security, ``nginx=1.22.1-9+deb12u11``
can no longer be installed, and every fresh deploy that names it fails. NVIDIA's CUDA repository
keeps every version, so the driver, toolkit and NCCL stay exact (operations/nvidia.py).

The policy for a distribution package, given a floor version ``F`` in group_data/all.py:

* accepted: the same upstream version as ``F`` (and epoch), at ``F`` or any newer build of it:
  stable and security updates keep the upstream version and only raise the Debian revision;
* apt preferences pin the package to that upstream version (``Pin: version 1.22.1-*`` at 1001),
  so neither an ``apt upgrade`` nor another archive (backports) moves it to a new upstream;
* a fresh host takes the archive's newest build of it, which must be at least ``F`` (a mirror
  that is behind stops the deploy, before anything is installed, naming both versions);
* an installed build that is accepted is left alone, and the package is held: a docker.io
  upgrade restarts the engine and every replica with it, so moving a live host to a newer
  security build is a change the operator makes (raise ``F``, then ``gpufleet rollout``);
* ``gpufleet drift`` reports a host whose installed build is behind the archive's candidate as a
  finding of its own kind, ``security`` (gpufleet/runtime_checks.py).
"""

from __future__ import annotations

import shlex

from debian.debian_support import Version
from pyinfra import host
from pyinfra.api import operation

from operations.pinned_apt import APT_GET
from operations.facts.apt import PackageStates
from operations.util import put_text


def series(floor: str) -> str:
    """The apt version glob of every build of ``floor``'s upstream version: ``1.22.1-*``."""
    v = Version(floor)
    epoch = f"{v.epoch}:" if v.epoch else ""
    return f"{epoch}{v.upstream_version}-*" if v.debian_revision else f"{epoch}{v.upstream_version}"


def accepts(floor: str, installed: str | None) -> bool:
    """True when ``installed`` is ``floor`` or a newer build of the same upstream version."""
    if installed is None:
        return False
    have, want = Version(installed), Version(floor)
    return (have.epoch or "0", have.upstream_version) == (want.epoch or "0", want.upstream_version) and have >= want


def behind(installed: str | None, candidate: str | None) -> bool:
    """True when the archive offers a newer build than the installed one (a pending security update)."""
    return bool(installed and candidate and Version(candidate) > Version(installed))


def preferences_text(floors: dict[str, str | None]) -> str:
    stanzas = [
        f"Package: {name}\nPin: version {series(floor)}\nPin-Priority: 1001\n"
        for name, floor in sorted(floors.items()) if floor
    ]
    return ("# Managed by gpufleet (group_data/all.py): each package stays on its upstream version;\n"
            "# newer security builds of it are accepted (operations/distro_packages.py).\n\n"
            + "\n".join(stanzas))


def _install_script(floors: dict[str, str | None], names: list[str]) -> str:
    """Shell that resolves each package's candidate, checks it against its floor, then installs."""
    lines = ["set -e", "want="]
    for name in names:
        floor = floors[name]
        if floor is None:
            lines.append(f"want=\"$want {shlex.quote(name)}\"")
            continue
        pkg, fl, glob = shlex.quote(name), shlex.quote(floor), series(floor)
        lines += [
            f"c=$(LC_ALL=C apt-cache policy {pkg} | sed -n 's/^ *Candidate: //p')",
            f'case "$c" in {glob}) ;; *) echo "{name}: the archive has no build of {glob} '
            f'(candidate: ${{c:-none}}); expected at least {floor} (group_data)" >&2; exit 1;; esac',
            f'dpkg --compare-versions "$c" ge {fl} || {{ echo "{name}: the archive\'s newest build $c is older '
            f'than the floor {floor} in group_data (is the mirror behind?)" >&2; exit 1; }}',
            f'want="$want {name}=$c"',
        ]
    lines.append(f"{APT_GET} install --no-install-recommends --allow-downgrades --allow-change-held-packages $want")
    return "\n".join(lines)


@operation()
def install(packages: dict[str, str | None], preferences_name: str = "gpufleet-distro"):
    """
    Install distribution packages at a security floor: this build or a newer one of its upstream version.

    + packages: ``{name: floor version}``, e.g. ``{"nginx": "1.22.1-9+deb12u11"}``; a floor of
      None installs whatever the archive has and neither pins nor holds the package
    + preferences_name: file under /etc/apt/preferences.d that pins each package to its upstream

    Packages with a floor are held (``apt-mark hold``): an unattended upgrade of docker.io would
    restart the engine and every replica on it.
    + preferences_name: file under /etc/apt/preferences.d that pins each package to its upstream

    The apt preferences are written first (they decide the candidate), then, only when a
    package is missing or outside its floor, the lists are refreshed and each candidate is
    checked against its floor before anything is installed. Nothing runs on a converged host.

    **Example:**

    .. code:: python

        distro_packages.install(
            name="nginx and Prometheus",
            packages={"nginx": "1.22.1-9+deb12u11", "prometheus": "2.42.0+ds-5+deb12u1"},
            preferences_name="gpufleet-lb",
        )
    """
    if any(packages.values()):
        yield from put_text(f"/etc/apt/preferences.d/{preferences_name}", preferences_text(packages))
    states = host.get_fact(PackageStates, packages=sorted(packages))
    missing = [n for n in sorted(packages) if not _acceptable(packages[n], states.get(n, {}).get("version"))]
    held = {n for n, s in states.items() if s.get("held")}
    # apt drops the hold of a package it installs explicitly, so those are held again too.
    to_hold = [n for n in sorted(packages) if packages[n] and (n not in held or n in missing)]
    if not missing and not to_hold:
        host.noop(f"{', '.join(sorted(packages))} installed at their floors")
        return
    if missing:
        yield f"{APT_GET} update"
        yield _install_script(packages, missing)
    if to_hold:
        yield "apt-mark hold " + " ".join(shlex.quote(n) for n in to_hold)


def _acceptable(floor: str | None, installed: str | None) -> bool:
    return installed is not None if floor is None else accepts(floor, installed)
