"""Installed versions and holds of a set of Debian packages, read in one command."""

from __future__ import annotations

import re

from pyinfra.api import FactBase

from operations.facts.util import RC, answer, quote_all, wrap_answer

# A Debian package name (policy 5.6.1), without architecture qualifier or pattern characters.
_PLAIN_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")


class PackageListsBatch:
    """One dpkg-query for every package list of a plan (operations/fact_batches.py): a GPU node's
    plan asks about ten. dpkg-query prints the packages sorted by name whatever the order asked,
    so a list's own answer is the batch's lines for its packages, and its exit status 1 when one
    of them is unknown to dpkg (no line), else 0. Only plain package names (no patterns, no
    architecture: ${Package} would not name them) are batched."""

    @staticmethod
    def batch_accepts(fact_kwargs: dict) -> bool:
        packages = fact_kwargs.get("packages")
        return (set(fact_kwargs) == {"packages"} and isinstance(packages, list) and bool(packages)
                and all(isinstance(p, str) and _PLAIN_PACKAGE.fullmatch(p) for p in packages))

    @staticmethod
    def batch_command(kwargs_list: list[dict]) -> str:
        return PackageStates().command(sorted({p for kwargs in kwargs_list for p in kwargs["packages"]}))

    @staticmethod
    def batch_outputs(lines: list[str], kwargs_list: list[dict], exit_code: int = 0) -> list[list[str]] | None:
        # exit_code: the wrapped command's, always 0 (wrap_answer); dpkg-query's is its RC line. A
        # batch killed at its limit never gets here (fact_batches.Batch.answers).
        if [line for line in lines if line.startswith(RC)] not in ([f"{RC}0"], [f"{RC}1"]):
            return None  # dpkg's database unreadable: each list reads alone
        rows = [line for line in lines if line.startswith("pkg\t")]
        known = {row.split("\t")[1] for row in rows}
        outputs = []
        for kwargs in kwargs_list:
            wanted = set(kwargs["packages"])
            own = [row for row in rows if row.split("\t")[1] in wanted]
            outputs.append([*own, f"{RC}{0 if wanted <= known else 1}"])
        return outputs


class PackageStates(FactBase):
    """``{package: {"version": str|None, "held": bool}}`` for the packages asked about.

    One ``dpkg-query`` for installed versions and holds together: a hold is dpkg's selection state
    (the first letter of ``db:Status-Abbrev``, ``h``), which is what ``apt-mark hold`` sets and
    ``apt-mark showhold`` lists, without loading apt's package cache (``apt-mark`` took 40 ms on
    a lab node and 0.7 s on a host with full Debian lists, once per package list of a plan). A
    package that is not installed has version None.

    Example::

        host.get_fact(PackageStates, packages=["libnccl2", "libnccl-dev"])
        # {"libnccl2": {"version": "2.27.7-1+cuda12.9", "held": True}, "libnccl-dev": {...}}
    """

    def command(self, packages: list[str]) -> str:
        names = quote_all(packages)
        # dpkg-query exits 1 when a package is unknown: that is an answer, not an error.
        return wrap_answer(
            f"dpkg-query -W -f='pkg\\t${{Package}}\\t${{Version}}\\t${{db:Status-Abbrev}}\\n' {names} 2>/dev/null"
        )

    batch_reader = PackageListsBatch()  # its lists from one dpkg-query (operations/fact_batches.py)

    @staticmethod
    def default() -> dict:
        return {}

    def process(self, output: list[str]) -> dict:  # type: ignore[override]
        states: dict[str, dict] = {}
        held = set()
        for line in answer(output):
            parts = line.split("\t")
            if parts[0] == "pkg" and len(parts) >= 4:
                name, version, status = parts[1].split(":")[0], parts[2], parts[3].strip()
                # Wanted state, then installed state: "ii" installed, "hi" held and installed; "rc"
                # (removed, config left) and "un" are not installed.
                states[name] = {"version": version if status.startswith(("ii", "hi")) else None, "held": status[:1] == "h"}
            elif parts[0] == "hold" and len(parts) == 2:  # `apt-mark showhold`, in doctor captures made before
                held.add(parts[1].strip().split(":")[0])
        for name in held:
            states.setdefault(name, {"version": None, "held": False})["held"] = True
        return states


class AptCandidates(FactBase):
    """``{package: {"installed": str|None, "candidate": str|None}}`` as ``apt-cache policy`` sees them.

    The candidate is what ``apt-get install <package>`` would take with the host's package lists
    and apt preferences as they are now (no ``apt-get update``: a read must not change the host).
    ``None`` means "(none)": not installed, or not in any configured archive.

    Example::

        host.get_fact(AptCandidates, packages=["nginx"])
        # {"nginx": {"installed": "1.22.1-9+deb12u11", "candidate": "1.22.1-9+deb12u12"}}
    """

    def command(self, packages: list[str]) -> str:
        # Nothing printed (a package no archive knows) is an answer too: {}.
        return wrap_answer(f"LC_ALL=C apt-cache policy {quote_all(packages)} 2>/dev/null")

    @staticmethod
    def default() -> dict:
        return {}

    def process(self, output: list[str]) -> dict:  # type: ignore[override]
        found: dict[str, dict] = {}
        current = None
        for line in answer(output):
            if line and not line[0].isspace() and line.rstrip().endswith(":"):
                current = found.setdefault(line.rstrip()[:-1].split(":")[0], {"installed": None, "candidate": None})
                continue
            key, _, value = line.strip().partition(": ")
            if current is not None and key in ("Installed", "Candidate"):
                current[key.lower()] = None if value == "(none)" else value
        return found


class KeyringFingerprints(FactBase):
    """Fingerprints of the keys in an apt keyring file (empty when the file is missing or unreadable).

    Example::

        host.get_fact(KeyringFingerprints, path="/etc/apt/keyrings/nvidia-cuda.gpg")
        # ["EB693B3035CD5710E231E123A4B469963BF863CC"]
    """

    def command(self, path: str) -> str:
        quoted = quote_all([path])
        return wrap_answer(f"[ -f {quoted} ] && gpg --show-keys --with-colons {quoted} 2>/dev/null "
                           "| awk -F: '/^fpr/ {print $10}'")

    @staticmethod
    def default() -> list:
        return []

    def process(self, output: list[str]) -> list:  # type: ignore[override]
        return [line.strip().upper() for line in answer(output) if line.strip()]


class KernelFlavours(FactBase):
    """The kernel meta-packages installed (``linux-image-<flavour>`` whose flavour is not a
    release): the packages that bring the *next* kernel, and whose ``linux-headers-<flavour>``
    brings that kernel's headers with it.

    .. code:: python

        host.get_fact(KernelFlavours)
        ["amd64"]                    # Debian: linux-image-amd64
        ["generic-hwe-24.04"]        # Ubuntu with the HWE kernel
    """

    command = wrap_answer("dpkg-query -W -f='${Package} ${db:Status-Abbrev}\\n' 'linux-image-*' 2>/dev/null")

    @staticmethod
    def default() -> list:
        return []

    def process(self, output: list[str]) -> list[str]:  # type: ignore[override]
        return kernel_flavours(answer(output))


RELEASE = re.compile(r"(^|-)\d+\.\d+\.\d+-\d+")  # a kernel release inside a package name


def kernel_flavours(lines: list[str]) -> list[str]:
    """Installed ``linux-image-*`` meta-packages' flavours; release packages are left out.

    >>> kernel_flavours(["linux-image-6.1.0-27-amd64 ii ", "linux-image-amd64 ii ", "linux-image-6.1.0-26-amd64 rc "])
    ['amd64']
    >>> kernel_flavours(["linux-image-generic-hwe-24.04 ii ", "linux-image-6.8.0-49-generic ii "])
    ['generic-hwe-24.04']
    >>> kernel_flavours(["linux-image-unsigned-6.8.0-49-generic ii ", "linux-image-extra-virtual ii "])
    []
    >>> kernel_flavours(["linux-image-amd64 hi "])  # held: the operator froze kernel upgrades
    []
    """
    out = []
    for line in lines:
        name, _, status = line.strip().partition(" ")
        flavour = name.removeprefix("linux-image-")
        # A package that names a release (6.1.0-27-amd64, unsigned-6.8.0-49-generic) is one kernel,
        # not the meta-package that brings the next; -dbg/-dbgsym builds and Ubuntu's old
        # extra-* metas have no headers counterpart.
        # A meta-package the operator holds ("hi") froze the host's kernel: its headers meta would
        # bring the archive's newest headers, for a kernel the host will not boot, and DKMS with them.
        if not (name.startswith("linux-image-") and status.startswith("ii") and flavour) \
                or RELEASE.search(flavour) or flavour.startswith("extra-") or flavour.endswith(("-dbg", "-dbgsym")):
            continue
        out.append(flavour)
    return sorted(set(out))
