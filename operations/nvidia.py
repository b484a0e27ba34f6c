"""The NVIDIA stack on a GPU node: CUDA repository, open driver, toolkit, NCCL pin, reboot."""

from __future__ import annotations

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, OperationError, StringCommand, operation
from pyinfra.facts.server import KernelVersion, LinuxDistribution

from operations import host_reboot, pinned_apt
from operations.util import put_text
from operations.docker_daemon import refuse_daemon_reload_under_gpu_containers
from operations.facts.apt import KernelFlavours, PackageStates
from operations.facts.gpu import DriverRebootMarker, NvidiaDriver
from operations.facts.kernel import SecureBoot
from operations.util import sudo_arguments

NVIDIA_DOWNLOAD = "https://developer.download.nvidia.com"
NOUVEAU_BLACKLIST = "/etc/modprobe.d/gpufleet-blacklist-nouveau.conf"
UNATTENDED_CONF = "/etc/apt/apt.conf.d/51gpufleet-nvidia-no-unattended"
# Driver packages pinned by preferences: the metapackage's dependencies must resolve to the same
# version (CUDA-repo metapackages depend on ">=" and have pulled a newer branch before).
DRIVER_PIN_PATTERNS = ["nvidia-*", "libnvidia-*", "libcuda1", "libnvcuvid1", "firmware-nvidia-gsp",
                       "xserver-xorg-video-nvidia"]


def cuda_repo_distro(distro: dict) -> str:
    """NVIDIA's name for an OS in its repository paths: debian12, ubuntu2204, ubuntu2404."""
    name, major, minor = (distro.get("name") or "").lower(), distro.get("major"), distro.get("minor") or 0
    if name == "debian":
        return f"debian{major}"
    if name == "ubuntu":
        return f"ubuntu{major}{minor:02d}"
    raise OperationError(f"no NVIDIA CUDA repository for {distro.get('name')} {major}")


def cuda_repo_uri(apt_mirror: str | None, distro: dict, arch: str = "x86_64") -> str:
    base = (apt_mirror or NVIDIA_DOWNLOAD).rstrip("/")
    return f"{base}/compute/cuda/repos/{cuda_repo_distro(distro)}/{arch}/"


@operation()
def cuda_repository(key_fingerprint: str, apt_mirror: str | None = None, key_name: str = "3bf863cc.pub"):
    """
    NVIDIA's CUDA apt repository for this host's OS (driver, toolkit and NCCL packages).

    + apt_mirror: base URL that replaces https://developer.download.nvidia.com (air-gapped sites, the lab)
    + key_name: the repository's signing key file, published beside its index
    + key_fingerprint: that key's fingerprint; any other key is refused (operations/pinned_apt.signed_source)

    **Example:**

    .. code:: python

        # developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/, NVIDIA's key pinned
        nvidia.cuda_repository(key_fingerprint="EB693B3035CD5710E231E123A4B469963BF863CC")
    """
    uri = cuda_repo_uri(apt_mirror, host.get_fact(LinuxDistribution))
    yield from pinned_apt.signed_source._inner(filename="nvidia-cuda", uri=uri, key_url=uri + key_name,
                                        key_fingerprint=key_fingerprint)


@operation()
def driver(version: str, packages: list[str], revision: str = "1", kernel_modules: str = "open",
           kernel_headers: bool = True):
    """
    The NVIDIA driver at one exact version, pinned by apt preferences and held.

    + version: upstream driver version, e.g. ``580.95.05``
    + packages: driver packages to install at ``<version>-<revision>`` (``nvidia-open`` = open modules)
    + kernel_modules: ``open`` (required on Blackwell) or ``proprietary``
    + kernel_headers: install ``linux-headers-$(uname -r)`` so DKMS can build the module, and
      the headers meta-package of each installed kernel meta-package, so a new kernel comes
      with its headers (the module is built for it before anyone reboots into it)

    Refuses to install while GPU containers run (the package's units reload systemd).

    **Example:**

    .. code:: python

        nvidia.driver(version="580.95.05", packages=["nvidia-open"])
    """
    if kernel_modules == "open" and not all("open" in p for p in packages if p.startswith(("nvidia-", "cuda-"))):
        raise OperationError(f"kernel_modules=open but the driver packages {packages} are not the open flavor")
    full = f"{version}-{revision}"
    driver_packages = {p: full for p in packages}
    wanted = dict(driver_packages)
    # The next kernel's headers come with it: for each kernel meta-package installed
    # (linux-image-amd64, -generic, -generic-hwe-24.04) its headers meta-package, not held, so
    # when unattended-upgrades brings a new kernel it brings its headers too and DKMS builds the
    # module before the reboot into it.
    following = {f"linux-headers-{f}": None for f in host.get_fact(KernelFlavours)} if kernel_headers else {}
    running_headers = {f"linux-headers-{host.get_fact(KernelVersion)}": None} if kernel_headers else {}
    wanted.update(running_headers)
    states = host.get_fact(PackageStates, packages=sorted({**wanted, **following}))
    # Only the driver (and the running kernel's headers) ship units that reload systemd; a headers
    # meta-package does not, so it never stops a serving node.
    install, _ = pinned_apt._plan(wanted, states, hold=False)
    if install:  # refused before the first change: a refused host keeps its old pin too
        refuse_daemon_reload_under_gpu_containers(f"installing {', '.join(install)}")
    yield from pinned_apt.preferences._inner(filename="gpufleet-nvidia-driver", packages=DRIVER_PIN_PATTERNS, version=full)
    # Held, the running kernel's headers included: their name carries the kernel release. The
    # headers first, in their own transaction: DKMS builds the module in the driver's postinst and
    # fails without them (apt may configure a package before it unpacks one it does not depend on).
    headers_install, _ = pinned_apt._plan(running_headers, states, hold=True)
    if running_headers:
        yield from pinned_apt.packages._inner(packages=running_headers, hold=True)
    # The index was just refreshed when the headers were installed.
    yield from pinned_apt.packages._inner(packages=driver_packages, hold=True, update=not headers_install)
    if following:
        yield from pinned_apt.packages._inner(packages=following, hold=False)


@operation()
def blacklist_nouveau():
    """
    Keep nouveau from binding the GPUs. Rebuild the initramfs with ``_if=<this op>.did_change``.

    **Example:**

    .. code:: python

        bl = nvidia.blacklist_nouveau()
        server.shell(commands=["update-initramfs -u"], _if=bl.did_change)
    """
    yield from put_text(NOUVEAU_BLACKLIST, "# Managed by gpufleet.\nblacklist nouveau\noptions nouveau modeset=0\n")


@operation()
def no_unattended_upgrades(patterns: list[str]):
    """
    Tell unattended-upgrades to leave the pinned NVIDIA, CUDA and NCCL packages alone.

    + patterns: package name patterns (regular expressions, as unattended-upgrades reads them)

    **Example:**

    .. code:: python

        nvidia.no_unattended_upgrades(patterns=["nvidia-", "libnvidia-", "cuda-", "libnccl"])
    """
    body = "".join(f'    "{p}";\n' for p in patterns)
    yield from put_text(UNATTENDED_CONF, "// Managed by gpufleet: pinned packages move only with a deploy.\n"
                         f"Unattended-Upgrade::Package-Blacklist {{\n{body}}};\n")


def nccl_package_version(version: str, cuda_version: str) -> str:
    """The Debian version of NVIDIA's libnccl2/libnccl-dev for an NCCL release built for a CUDA.

    >>> nccl_package_version("2.27.7", "12.9")
    '2.27.7-1+cuda12.9'
    """
    return f"{version}-1+cuda{cuda_version}"


def upstream_version(package_version: str | None) -> str | None:
    """The upstream part of a Debian package version: no epoch, no Debian revision.

    >>> upstream_version("1:580.95.05-1ubuntu1"), upstream_version(None)
    ('580.95.05', None)
    """
    return package_version.split(":")[-1].split("-")[0] if package_version else None


@operation()
def nccl(version: str, cuda_version: str):
    """
    libnccl2 and libnccl-dev at ``<version>-1+cuda<cuda_version>``, pinned at priority 1001 and held.

    This is the host's NCCL (nccl-tests, host tools). vLLM loads the NCCL wheel inside its image,
    which files/Dockerfile.vllm_rtx5090 pins to the same version.

    **Example:**

    .. code:: python

        nvidia.nccl(version="2.27.7", cuda_version="12.9")
    """
    full = nccl_package_version(version, cuda_version)
    names = ["libnccl2", "libnccl-dev"]
    yield from pinned_apt.preferences._inner(filename="gpufleet-nccl", packages=names, version=full)
    yield from pinned_apt.packages._inner(packages=dict.fromkeys(names, full), hold=True)


@operation()
def container_toolkit(version: str):
    """
    The NVIDIA Container Toolkit at an exact version, held.

    **Example:**

    .. code:: python

        nvidia.container_toolkit(version="1.17.8-1")
    """
    states = host.get_fact(PackageStates, packages=["nvidia-container-toolkit"])
    if states.get("nvidia-container-toolkit", {}).get("version") != version:
        refuse_daemon_reload_under_gpu_containers(f"installing nvidia-container-toolkit={version}")
    yield from pinned_apt.packages._inner(packages={"nvidia-container-toolkit": version}, hold=True)


REBOOT_MARKER_DIR = "/var/lib/gpufleet/driver-reboots"


@operation(is_idempotent=False)
def reboot_if_driver_stale(version: str, proc_version_path: str = "/proc/driver/nvidia/version"):
    """
    Reboot when the loaded kernel module is not the driver version the fleet pins, then check it is.

    + version: the pinned upstream version (what ``driver`` installs)
    + proc_version_path: where the loaded module reports its version

    Decided from the loaded module, so a converged host never reboots and a host whose package
    was upgraded behind our back (loaded != installed) does. After the reboot the loaded version
    must be the pin; if it is not (Secure Boot refusing an unsigned module, a DKMS build that
    failed), the host stops here with the cause to look at. The reboot is recorded on the host
    (``/var/lib/gpufleet/driver-reboots/<version>``, with a twin in /run that a real reboot
    clears): a host that already rebooted for this version and still does not load it is never
    rebooted again (no reboot loops); one whose reboot never happened is rebooted. Run with
    ``_serial=True``: one host at a time goes down.

    **Example:**

    .. code:: python

        nvidia.reboot_if_driver_stale(version="580.95.05", _serial=True)
    """
    loaded = host.get_fact(NvidiaDriver, path=proc_version_path)
    if loaded.get("loaded") and loaded.get("version") == version:
        host.noop(f"driver {version} loaded")
        return
    marker = f"{REBOOT_MARKER_DIR}/{version}"
    if host.get_fact(DriverRebootMarker, version=version)["rebooted_since"]:
        sb = host.get_fact(SecureBoot)
        raise OperationError(driver_not_loaded(version, loaded.get("version"), after_reboot=True,
                                               secure_boot=sb.get("detail") or "" if sb.get("state") == "enabled" else ""))
    reason = f"driver {version} installed, {loaded.get('version') or 'none'} loaded"
    # The /run twin disappears with a real reboot: a marker without it means "rebooted already".
    yield (f"install -d -m 0755 {REBOOT_MARKER_DIR} /run/gpufleet-driver-reboot && date -u +%FT%TZ > {marker} "
           f"&& touch /run/gpufleet-driver-reboot/{version}")
    yield from host_reboot.reboot._inner(reason=reason)
    yield FunctionCommand(_check_loaded, (version, proc_version_path), {})


def driver_not_loaded(version: str, loaded: str | None, after_reboot: bool, secure_boot: str = "") -> str:
    """What to look at when the pinned driver is not the loaded one after its reboot."""
    when = "after its reboot" if after_reboot else "now"
    if "enabled" in secure_boot:
        return (f"driver {version} is installed but {loaded or 'no driver'} is loaded {when}: {secure_boot} "
                "(mokutil --sb-state), and the kernel refuses a module not signed with an enrolled key. Enroll "
                "the DKMS signing key with MOK (`mokutil --import /var/lib/dkms/mok.pub`, then confirm it in the "
                "MOK manager at the next boot) or turn Secure Boot off; not rebooting again until then. Once "
                f"fixed, `rm {REBOOT_MARKER_DIR}/{version}` and deploy again")
    return (f"driver {version} is installed but {loaded or 'no driver'} is loaded {when}; not rebooting again. "
            "Look at: Secure Boot (`mokutil --sb-state`: an unsigned module is refused; enroll the DKMS key "
            "with MOK or sign the module), the module build (`dkms status`, headers for `uname -r`), and "
            f"`journalctl -b -k | grep -i nvidia`. Once fixed, `rm {REBOOT_MARKER_DIR}/{version}` and deploy again")


def _check_loaded(state, host, version: str, proc_version_path: str) -> bool:  # pragma: no cover - needs a host
    from operations.facts.gpu import parse_driver_version

    sudo = sudo_arguments(host)
    ok, output = host.run_shell_command(StringCommand(f"cat {proc_version_path}"), **sudo)
    found = parse_driver_version(output.stdout.splitlines()).get("version") if ok else None
    if found != version:
        _, sb = host.run_shell_command(StringCommand("mokutil --sb-state 2>/dev/null || true"), **sudo)
        # Logged and failed here (not raised: pyinfra would call it an unexpected callback error).
        logger.error(f"{host.print_prefix}" + driver_not_loaded(version, found, after_reboot=True,
                                                               secure_boot=sb.stdout.strip()))
        return False
    sudo = sudo_arguments(host)
    cleared, _ = host.run_shell_command(StringCommand(f"rm -f {REBOOT_MARKER_DIR}/{version}"), **sudo)
    if not cleared:
        logger.error(f"{host.print_prefix}driver {version} loaded, but {REBOOT_MARKER_DIR}/{version} could not be removed")
        return False
    return True
