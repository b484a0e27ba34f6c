"""Checks a host must pass before anything is installed on it.

They read facts only and raise at plan time, so a host that fails one is never touched: pyinfra
stops it before it executes anything (the other hosts go on).
"""

from __future__ import annotations

from pyinfra import host, logger
from pyinfra.api import OperationError, operation
from pyinfra.facts.server import LinuxDistribution

from operations.util import sudo_arguments


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


# ------------------------------------------------------------------------------- GPU node ---------
def gpu_node_findings(*, pci: dict, links: dict, secure_boot: dict, disk: dict | None, headers: dict | None,
                      acs: dict, gpu_count: int, device_id: str, min_link_width: int, module_signing: str,
                      min_free_gib: float) -> tuple[list[str], list[str]]:
    """``(problems, warnings)`` of a would-be GPU node from its facts; each problem says what to do.

    Pure, so every check is tested on fact outputs. ``headers`` None: the node does not build the
    module with DKMS here (``nvidia_kernel_headers`` off), so nothing is asked of it.
    """
    problems, warnings = [], []
    if pci.get("status") == "missing":
        # Only an lspci dump needs lspci (the bus falls back to sysfs): a fresh host gets pciutils
        # with the base packages, and the next run checks.
        warnings.append("GPUs not counted: lspci is not installed to read the PCI dump (pciutils comes with the "
                        "base packages; the next deploy checks)")
    elif pci.get("status") != "ok":
        problems.append(f"cannot list the PCI bus ({pci.get('error')}): check pciutils and /sys/bus/pci")
    else:
        ours = [d for d in pci["devices"] if d.get("device_id") == device_id]
        others = sorted({f"10de:{d.get('device_id')}" for d in pci["devices"] if d.get("device_id") != device_id})
        if gpu_count and len(ours) != gpu_count:
            problems.append(f"{len(ours)} GPU(s) 10de:{device_id} on the PCI bus, expected gpu_count={gpu_count}"
                            + (f" (also found: {', '.join(others)})" if others else "")
                            + ": reseat or replace the card, or fix gpu_count/gpu_pci_device_id")
    if links.get("status") != "ok":
        warnings.append(f"PCIe link widths not checked: lspci could not run ({links.get('error')}); "
                        "install pciutils for the next deploy to check them")
    for link in links.get("links") or []:
        if not link.get("readable"):
            warnings.append(f"PCIe link of {link['bus_id']} not readable (run as root): width not checked")
        elif link["width"] is not None and link["width"] < min_link_width:
            problems.append(f"GPU {link['bus_id']} runs at PCIe x{link['width']} (expected at least "
                            f"x{min_link_width}): tensor parallel all-reduces over this link; move the card to "
                            "a full-width slot or check the riser and the BIOS bifurcation setting")
        elif link.get("speed_gts") and link.get("max_speed_gts") and link["speed_gts"] < link["max_speed_gts"]:
            # GPUs lower the link speed when idle: slower is normal there, so it is said, not refused.
            warnings.append(f"GPU {link['bus_id']} link at {link['speed_gts']:g} GT/s of {link['max_speed_gts']:g} "
                            "(normal while idle; `gpufleet verify --nccl` measures the bus under load)")
    if secure_boot.get("state") == "enabled" and module_signing != "mok":
        problems.append("Secure Boot is enabled and secure_boot_module_signing is 'none': the kernel will refuse "
                        "the nvidia module DKMS builds. Enroll DKMS's key (mokutil --import /var/lib/dkms/mok.pub, "
                        "reboot, confirm at the console) and set secure_boot_module_signing='mok', or turn Secure "
                        "Boot off in the firmware")
    free = disk.get("free_gib") if disk is not None else None  # None: not judged (Docker runs here already)
    if disk is not None and free is None:
        problems.append(f"cannot read the free disk of {disk.get('path') or 'the Docker data root'} ({disk.get('error')})")
    elif disk is not None and free < min_free_gib:
        problems.append(f"{free:g} GiB free on {disk['path']}, expected at least {min_free_gib:g} GiB (the next vLLM "
                        "image and one more copy of the model's weights): free space or set preflight_free_disk_gib")
    if headers is not None and not headers.get("installed") and not headers.get("candidate"):
        problems.append(f"no {headers.get('package') or 'linux-headers package'} for the running kernel "
                        f"{headers.get('kernel')} in the apt sources: DKMS cannot build the nvidia module. Boot a "
                        "kernel whose headers the archive carries (apt full-upgrade; reboot), or add the archive")
    if acs.get("acs_enabled"):
        warnings.append("PCIe ACS redirects peer-to-peer traffic on " + ", ".join(acs.get("redirecting") or [])
                        + ": harmless without P2P (RTX 5090), slow or broken P2P on GPUs that use it")
    return problems, warnings


@operation()
def gpu_node(gpu_count: int, device_id: str, min_link_width: int = 16, module_signing: str = "none",
             docker_data_root: str = "/var/lib/docker", min_free_gib: float = 0.0, kernel_headers: bool = True,
             pci_dump_file: str | None = None):
    """
    Stop the deploy on this host, before anything changes, unless it can be a GPU node.

    + gpu_count, device_id: how many GPUs with PCI id ``10de:<device_id>`` must be on the bus (0: any)
    + min_link_width: the narrowest PCIe link a GPU may have (a 5090 at x4 quarters TP's bus)
    + module_signing: ``none`` or ``mok``; with Secure Boot on, ``none`` is refused
    + docker_data_root, min_free_gib: on a fresh host (no Docker data root yet), free disk for the
      image and the weights; a node that already runs Docker is not judged here (its disk is
      monitoring's, and a rollout's freshly built image must not make preflight refuse a drained node)
    + kernel_headers: DKMS builds the module here, so the running kernel's headers must be installable
    + pci_dump_file: read GPUs and links from an ``lspci -xxx`` dump instead of the bus (the lab)

    Every problem is listed at once, each with what to do. Warnings (ACS, a link slower than its
    maximum, which GPUs do when idle) are logged and never stop the host.

    **Example:**

    .. code:: python

        preflight.gpu_node(name="Preflight: GPU node", gpu_count=2, device_id="2b85", min_free_gib=43)
    """
    from operations.facts.host_capacity import FreeDisk, KernelHeaders
    from operations.facts.kernel import SecureBoot
    from operations.facts.pci import NvidiaPciDevices, PcieAcs, PcieLinks

    # A node that runs Docker already is not judged on disk: its disk pressure is monitoring's, and
    # a rollout's freshly built image must not make preflight refuse a drained node.
    free_disk = host.get_fact(FreeDisk, path=docker_data_root)
    problems, warnings = gpu_node_findings(
        pci=host.get_fact(NvidiaPciDevices, dump_file=pci_dump_file),
        links=host.get_fact(PcieLinks, dump_file=pci_dump_file, **sudo_arguments(host)),
        secure_boot=host.get_fact(SecureBoot),
        disk=free_disk if free_disk.get("path") != docker_data_root else None,
        headers=host.get_fact(KernelHeaders) if kernel_headers else None,
        acs=host.get_fact(PcieAcs, **sudo_arguments(host)) if not pci_dump_file else {},
        gpu_count=gpu_count, device_id=device_id, min_link_width=min_link_width, module_signing=module_signing,
        min_free_gib=min_free_gib)
    for warning in warnings:
        logger.warning(f"{host.print_prefix}preflight: {warning}")
    if problems:
        raise OperationError("this host cannot be a GPU node yet (nothing was changed):\n  - " + "\n  - ".join(problems))
    host.noop(f"{gpu_count} x 10de:{device_id}, links, Secure Boot, disk and headers checked")
    return
    yield  # pragma: no cover - makes this a generator, as pyinfra expects of an operation
