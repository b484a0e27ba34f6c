"""Install Debian packages at exact versions, held or not, in one idempotent step."""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import operation

from operations.facts.apt import KeyringFingerprints, PackageStates
from operations.util import put_text

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
    # apt drops the hold of a package it installs explicitly, so those are held again too.
    reinstalled = {p.split("=")[0] for p in install}
    to_hold = sorted(n for n in wanted if n not in held or n in reinstalled) if hold else []
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


def preferences_text(packages: list[str], version: str, priority: int = 1001) -> str:
    return (
        "# Managed by gpufleet (group_data/all.py): pinned so that no dependency, upgrade or other\n"
        "# repository can move these packages off the fleet's version.\n"
        f"Package: {' '.join(packages)}\nPin: version {version}\nPin-Priority: {priority}\n"
    )


@operation()
def preferences(filename: str, packages: list[str], version: str, priority: int = 1001):
    """
    Pin packages to one version in ``/etc/apt/preferences.d/<filename>``.

    + filename: file name under /etc/apt/preferences.d
    + packages: package names (apt patterns such as ``nvidia-*`` allowed)
    + version: the exact version to pin (a ``*`` glob is allowed by apt, gpufleet passes exact ones)
    + priority: above 1000 so that apt prefers it even when it means a downgrade

    **Example:**

    .. code:: python

        apt.preferences(filename="gpufleet-nccl", packages=["libnccl2", "libnccl-dev"],
                        version="2.27.7-1+cuda12.9")
    """
    yield from put_text(f"/etc/apt/preferences.d/{filename}", preferences_text(packages, version, priority))


def deb822_source_text(uri: str, keyring: str, suite: str = "/", components: list[str] | None = None) -> str:
    lines = ["# Managed by gpufleet.", "Types: deb", f"URIs: {uri}", f"Suites: {suite}"]
    if components:
        lines.append(f"Components: {' '.join(components)}")
    lines.append(f"Signed-By: {keyring}")
    return "\n".join(lines) + "\n"


@operation()
def signed_source(filename: str, uri: str, key_url: str, key_fingerprint: str, suite: str = "/",
                  components: list[str] | None = None):
    """
    An apt repository as a deb822 source with its own keyring (never the global trusted.gpg).

    + filename: base name for ``/etc/apt/sources.list.d/<filename>.sources`` and
      ``/etc/apt/keyrings/<filename>.gpg``
    + uri: the repository URL (for a flat repository such as NVIDIA's CUDA one, suite "/")
    + key_url: where the repository's public key is published (ASCII-armoured or binary)
    + key_fingerprint: the key's full fingerprint (40 hex digits), pinned in group_data

    The key is fetched when the keyring is missing or holds another key, and installed only if
    its fingerprint is the pin: a key swapped on the server (or a man in the middle) stops the
    host with both fingerprints, the keyring unchanged. The source file is rewritten only when
    its content differs. The next package install refreshes the index (operations/apt.packages).

    **Example:**

    .. code:: python

        apt.signed_source(
            filename="nvidia-cuda",
            uri="https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/",
            key_url="https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/3bf863cc.pub",
            key_fingerprint="EB693B3035CD5710E231E123A4B469963BF863CC",
        )
    """
    keyring = f"/etc/apt/keyrings/{filename}.gpg"
    pin = key_fingerprint.upper()
    if pin not in host.get_fact(KeyringFingerprints, path=keyring):
        yield fetch_key_command(key_url, pin, keyring)
    yield from put_text(f"/etc/apt/sources.list.d/{filename}.sources",
                         deb822_source_text(uri, keyring, suite, components))


def fetch_key_command(key_url: str, fingerprint: str, keyring: str) -> str:
    """Shell: fetch the key, refuse it unless its fingerprint is ``fingerprint``, install it as ``keyring`` (0644)."""
    url = shlex.quote(key_url)
    return (
        f'set -e; install -d -m 0755 /etc/apt/keyrings; tmp=$(mktemp); trap \'rm -f "$tmp" {keyring}.tmp\' EXIT; '
        f'curl -fsSL {url} -o "$tmp"; '
        f'got=$(gpg --show-keys --with-colons "$tmp" 2>/dev/null | awk -F: \'/^fpr/ {{print $10; exit}}\'); '
        f'if [ "$got" != {fingerprint} ]; then echo "gpufleet: the key at "{url}" has fingerprint '
        f'${{got:-none}}, expected {fingerprint} (nvidia_repo_key_fingerprint); {keyring} unchanged" >&2; exit 1; fi; '
        f'gpg --dearmor --yes -o {keyring}.tmp < "$tmp" 2>/dev/null || cp "$tmp" {keyring}.tmp; '
        f"chmod 0644 {keyring}.tmp; mv {keyring}.tmp {keyring}"
    )
