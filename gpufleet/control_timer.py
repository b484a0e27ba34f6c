"""A nightly gpufleet job as a systemd service + timer on the control host (drift, backup)."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from gpufleet import PROJECT_ROOT


def service_unit(managed_by: str, description: str, dirs: list[str], command: list[str], exit_2: str) -> str:
    """The oneshot ``.service`` unit: ``command`` from this checkout, after ``mkdir -p dirs``; exit 2
    (``exit_2`` says what it means) is reported through metrics, not a unit failure."""
    return f"""# Managed by `{managed_by}`.
[Unit]
Description={description}
After=network-online.target
Wants=network-online.target

[Service]
Type=oneshot
WorkingDirectory={PROJECT_ROOT}
ExecStartPre=/usr/bin/mkdir -p {" ".join(dirs)}
ExecStart={" ".join(shlex.quote(c) for c in command)}
# 2 = {exit_2}
SuccessExitStatus=2
Nice=10
"""


def timer_unit(managed_by: str, description: str, on_calendar: str) -> str:
    """The ``.timer`` unit: ``on_calendar`` with up to 15 minutes' random delay, caught up after downtime."""
    return f"""# Managed by `{managed_by}`.
[Unit]
Description={description}

[Timer]
OnCalendar={on_calendar}
RandomizedDelaySec=15m
Persistent=true

[Install]
WantedBy=timers.target
"""


def install_units(units: dict[str, str], timer: str, unit_dir: str, enable: bool) -> list[str]:
    """Write the units that differ; with ``enable``, reload systemd (if one changed) and enable ``timer``."""
    written = []
    for name, text in units.items():
        path = Path(unit_dir) / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            written.append(str(path))
    if enable:
        if written:
            subprocess.run(["systemctl", "daemon-reload"], check=True)
        subprocess.run(["systemctl", "enable", "--now", timer], check=True)
    return written
