"""Host-level steps pyinfra's own operations get wrong for us: a reboot that also works in the lab."""

from __future__ import annotations

import logging
import time

from pyinfra import logger
from pyinfra.api import FunctionCommand, OperationError, StringCommand, operation

from operations import deploy_lock

MARKER = "/run/gpufleet-reboot-pending"


@operation(is_idempotent=False)
def reboot(reason: str, delay: int = 3, timeout: int = 600):
    """
    Reboot and wait until the host is back: SSH answers, a marker left in /run is gone, and
    systemd has finished booting (``systemctl is-system-running --wait``).

    + reason: logged, so the run says why a host went down
    + delay: seconds before the first reconnect attempt
    + timeout: give up (and fail the host) after this many seconds

    pyinfra's ``server.reboot`` waits for the uptime to drop; a host whose kernel is shared (a
    container, as in the lab) never shows that. /run is a tmpfs on every systemd host, so a
    marker there disappears with any real reboot. Only call it from an operation that decided a
    reboot is needed; use ``_serial=True`` to take one host down at a time.

    **Example:**

    .. code:: python

        host_reboot.reboot(reason="driver 580.95.05 installed, 575.57.08 loaded", _serial=True)
    """
    yield StringCommand(f"touch {MARKER}")
    yield StringCommand("( sleep 1 && systemctl reboot ) </dev/null >/dev/null 2>&1 &")
    yield FunctionCommand(_wait_for_reboot, (reason, delay, timeout), {})


def _wait_for_reboot(state, host, reason: str, delay: int, timeout: int) -> bool:  # pragma: no cover - needs a host
    logger.info(f"{host.print_prefix}rebooting: {reason}")
    # While the host is down, paramiko logs every refused banner with a traceback: expected noise.
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    time.sleep(delay)
    host.disconnect()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        host.connect(show_errors=False)
        if host.connected:
            ok, output = host.run_shell_command(StringCommand(f"test -e {MARKER} && echo pending || echo rebooted"))
            if ok and "rebooted" in output.stdout:
                # SSH answers before boot has finished: wait for systemd's start-up jobs (Docker and
                # the units the next operations look at), "degraded" included, within the time left.
                left = max(1, int(deadline - time.monotonic()))
                host.run_shell_command(StringCommand(f"timeout {left} systemctl is-system-running --wait || true"))
                # The reboot ended the watcher that held this run's deploy lock: take it again on
                # the new connection, or stop here if another run took the host meanwhile.
                deploy_lock.hold(state, host, f"pyinfra deploy (after rebooting: {reason})")
                return True
            host.disconnect()
        time.sleep(1)
    raise OperationError(f"not back {timeout}s after reboot ({reason})")
