"""The nightly drift check as a systemd timer on the control host (where this repository lives).

The service runs `gpufleet drift` from this checkout, keeps the last JSON report and writes
Prometheus textfile metrics for node_exporter's textfile collector; exit 2 (drift found) is not
a unit failure: alerting reads the metrics (gpufleet_drift_operations > 0, gpufleet_drift_host_unchecked).

It keeps the last run's XID and restart counters beside the report (``counters.json``), so each
night reports what is new since the night before. With ``--fix`` each run deploys this checkout
as it is then: the run refuses (exit 1, the unit fails, ``gpufleet_drift_fix_refused`` is 1) when
the checkout has uncommitted or untracked changes, unless the timer was installed with
``--allow-dirty``; the report records the commit it deployed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gpufleet.control_timer import install_units, service_unit, timer_unit

UNIT = "gpufleet-drift"


def units(inventory: str, on_calendar: str, state_dir: str, textfile_dir: str, fix: bool,
          allow_dirty: bool = False) -> dict[str, str]:
    gpufleet_bin = Path(sys.executable).with_name("gpufleet")
    command = [str(gpufleet_bin), "drift", inventory, "--report", f"{state_dir}/last.json",
               "--counters", f"{state_dir}/counters.json", "--prometheus", f"{textfile_dir}/gpufleet_drift.prom"]
    command += (["--fix"] + (["--allow-dirty"] if allow_dirty else [])) if fix else []
    service = service_unit("gpufleet drift install-timer", f"gpufleet nightly drift check ({inventory})", command,
                           "drift found: reported through the metrics and the report, not a unit failure.")
    timer = timer_unit("gpufleet drift install-timer", "Run the gpufleet drift check nightly", on_calendar)
    return {f"{UNIT}.service": service, f"{UNIT}.timer": timer}


def install(inventory: str, on_calendar: str = "*-*-* 03:00:00", unit_dir: str = "/etc/systemd/system",
            state_dir: str = "/var/lib/gpufleet/drift",
            textfile_dir: str = "/var/lib/prometheus/node-exporter", fix: bool = False, enable: bool = True,
            allow_dirty: bool = False) -> list[str]:
    return install_units(units(inventory, on_calendar, state_dir, textfile_dir, fix, allow_dirty), f"{UNIT}.timer",
                         unit_dir, enable)
