"""Switches on the lab's stand-in hosts that make them fail like real hosts do (lab only).

``secure_boot(node, True)``: the node's firmware "enforces" Secure Boot from its next boot on; the
stand-in driver (lab/standins/load-driver) then refuses to load, as the kernel refuses a DKMS
module signed with no enrolled key, and the stand-in ``mokutil --sb-state`` says so.

``pcie_link_width(node, 4)``: the node's stand-in GPUs sit on a x4 link (what ``lspci -vv``
reads from the lab's dump), as a card in the wrong slot does; preflight must refuse the node.
"""

from __future__ import annotations

import subprocess

from gpufleet import PROJECT_ROOT

MOKUTIL = PROJECT_ROOT / "lab" / "standins" / "mokutil"


def _exec(node: str, *command: str) -> None:
    subprocess.run(["docker", "exec", node, *command], check=True, capture_output=True, timeout=60)


def secure_boot(node: str, enabled: bool) -> None:
    """Turn the stand-in Secure Boot of a lab node on or off (takes effect for the next driver load)."""
    subprocess.run(["docker", "cp", str(MOKUTIL), f"{node}:/usr/local/sbin/mokutil"], check=True,
                   capture_output=True, timeout=60)
    state = "enabled" if enabled else "disabled"
    _exec(node, "sh", "-c", f"mkdir -p /etc/gpufleet-lab && echo {state} > /etc/gpufleet-lab/secure-boot")


def pcie_link_width(node: str, width: int | None) -> None:
    """Put the node's stand-in GPUs on a PCIe link of ``width`` lanes (a card in a x4 slot, a bad
    riser), or back on their full link with None: the lab's ``lspci`` dump is written again."""
    import json

    from gpufleet.lab.pcidump import lspci_dump

    gpus = json.loads(subprocess.run(["docker", "exec", node, "cat", "/etc/gpufleet-lab/gpus.json"], check=True,
                                     capture_output=True, text=True, timeout=60).stdout)
    if width is not None:
        gpus = [{**gpu, "link_width": width} for gpu in gpus]
    subprocess.run(["docker", "exec", "-i", node, "sh", "-c", "cat > /etc/gpufleet-lab/lspci.dump"],
                   input=lspci_dump(gpus), text=True, check=True, capture_output=True, timeout=60)
