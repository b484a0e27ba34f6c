"""Switches on the lab's stand-in hosts that make them fail like real hosts do (lab only).

``secure_boot(node, True)``: the node's firmware "enforces" Secure Boot from its next boot on; the
stand-in driver (lab/standins/load-driver) then refuses to load, as the kernel refuses a DKMS
module signed with no enrolled key, and the stand-in ``mokutil --sb-state`` says so.
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
