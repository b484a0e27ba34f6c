"""A nightly gpufleet job as a systemd service + timer on the control host (drift, backup).

Nothing goes into a unit unchecked: a newline would start a setting of its own and systemd expands
``%`` specifiers everywhere (:func:`unit_value_problem`); the commands check their flags with it,
and the calendar with ``systemd-analyze`` (:func:`calendar_problem`), before anything is written.
Command words are quoted by systemd's rules (:func:`systemd_quote`), not a shell's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import click

from gpufleet import PROJECT_ROOT

# Words systemd reads as they are; any other is double-quoted (systemd.syntax(7), "Quoting").
_PLAIN_WORD = re.compile(r"[A-Za-z0-9_@+=:,./-]+")


def unit_value_problem(value: str) -> str | None:
    """Why ``value`` cannot be written into a unit file, or None."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "no newline or other control character (each line of a unit file is a setting of its own)"
    if "%" in value:
        return "no % (systemd expands %-specifiers in unit files)"
    return None


def calendar_problem(value: str) -> str | None:
    """Why ``value`` is not an OnCalendar= expression, or None.

    Asked of ``systemd-analyze calendar`` where this host has it. Where it has not, only the
    characters are checked (:func:`unit_value_problem`), and a bad expression is refused by systemd
    when the timer is enabled, after the units were written.
    """
    problem = unit_value_problem(value)
    if problem or shutil.which("systemd-analyze") is None:
        return problem
    result = subprocess.run(["systemd-analyze", "calendar", "--", value], capture_output=True, text=True)
    if result.returncode != 0:
        said = (result.stderr.strip().splitlines() or ["refused"])[-1]
        return f"a systemd calendar expression such as '*-*-* 03:00:00' or 'daily' (systemd-analyze: {said})"
    return None


def unit_value_option(ctx, param, value: str | None) -> str | None:
    """click callback: a flag whose value goes into the units, refused before anything is written."""
    problem = value is not None and unit_value_problem(value)
    if problem:
        raise click.BadParameter(f"{value!r}: {problem}")
    return value


def on_calendar_option(ctx, param, value: str) -> str:
    """click callback: ``--on-calendar``, checked by :func:`calendar_problem`."""
    problem = calendar_problem(value)
    if problem:
        raise click.BadParameter(f"{value!r}: {problem}")
    return value


def write_textfile(registry, path: str) -> None:
    """Write a prometheus_client registry for node_exporter's textfile collector: atomically
    (``write_to_textfile``), into a directory made if missing (the units make none before the run),
    world-readable whatever the run's umask (node_exporter runs as its own user; counts only)."""
    from prometheus_client import write_to_textfile

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(path, registry)
    os.chmod(path, 0o644)


def systemd_quote(word: str) -> str:
    """``word`` as one item of an ``Exec*=`` command line: double-quoted unless plain, ``\\`` and ``"``
    escaped, ``$`` doubled (systemd substitutes ``${VAR}`` inside quotes too)."""
    if _PLAIN_WORD.fullmatch(word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$") + '"'


def _check(values: list[tuple[str, str]]) -> None:
    for what, value in values:
        problem = unit_value_problem(value)
        if problem:
            raise ValueError(f"{what} {value!r}: {problem}")


def service_unit(managed_by: str, description: str, command: list[str], exit_2: str) -> str:
    """The oneshot ``.service`` unit: ``command`` from this checkout; exit 2 (``exit_2`` says what it
    means) is reported through metrics, not a unit failure. Nothing runs before the command: it makes
    the directories it writes, the state directory 0700 (gpufleet/private_files.py), where a
    ``mkdir -p`` would have made it 0755 first."""
    _check([("the checkout's path", str(PROJECT_ROOT)), ("the description", description)]
           + [("the command word", word) for word in command])
    return f"""# Managed by `{managed_by}`.
[Unit]
Description={description}
After=network-online.target
Wants=network-online.target

[Service]
Type=oneshot
WorkingDirectory={PROJECT_ROOT}
ExecStart={" ".join(systemd_quote(c) for c in command)}
# 2 = {exit_2}
SuccessExitStatus=2
Nice=10
"""


def timer_unit(managed_by: str, description: str, on_calendar: str) -> str:
    """The ``.timer`` unit: ``on_calendar`` with up to 15 minutes' random delay, caught up after downtime."""
    _check([("the calendar", on_calendar)])
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
