"""``gpufleet backup`` and ``gpufleet restore``: the fleet's Milvus to and from the control host or a bucket."""

from __future__ import annotations

import json
import sys

import click

from gpufleet.commands.drift import _DriftGroup
from gpufleet.control_timer import on_calendar_option, unit_value_option
from gpufleet.data_backup import BackupError
from gpufleet.fleet import parse_data_overrides
from gpufleet.settings import SettingsError, format_issues


def _or_exit(what: str, work):
    """``work()``'s result; bad input or a failed backup/restore: the reason on stderr, exit 1."""
    try:
        return work()
    except SettingsError as exc:
        click.echo(format_issues(exc.issues), err=True)
    except BackupError as exc:
        click.echo(f"{what}: {exc}", err=True)
    sys.exit(1)


def _location(ctx, param, value: str | None) -> str | None:
    """A backup location: an absolute or ~/ directory, or s3://BUCKET[/PREFIX]; refused before anything runs."""
    from gpufleet.backup_store import StoreError, is_s3, parse_s3

    if value is None:
        return None
    if is_s3(value):
        try:
            parse_s3(value)
        except StoreError as exc:
            raise click.BadParameter(str(exc)) from None
    elif not value.startswith(("/", "~")):
        raise click.BadParameter(f"{value}: an absolute or ~/ directory, or s3://BUCKET[/PREFIX] (a relative path "
                                 "would depend on where the command, or the timer's service, runs)")
    return value


class _BackupGroup(_DriftGroup):
    """`gpufleet backup INVENTORY ...` backs up; `gpufleet backup install-timer ...` installs the timer."""

    default_command = "run"


def _timer_location(ctx, param, value: str | None) -> str | None:
    """A backup location the timer's unit carries: a location, and a value a unit file can hold."""
    return unit_value_option(ctx, param, _location(ctx, param, value))


@click.group(cls=_BackupGroup)
def backup() -> None:
    """Back up the fleet's Milvus (`gpufleet backup INVENTORY`), or install the nightly timer."""


@backup.command("run")
@click.argument("inventory_path", metavar="INVENTORY")
@click.option("--to", "to", default=None, callback=_location, help="Directory or s3://BUCKET/PREFIX for backups (default: the "
              "Milvus host's milvus_backup_dir, where drift looks); a bucket is reached with its milvus_backup_s3_* settings.")
@click.option("--keep", type=click.IntRange(min=1), default=None, help="Keep this many backups of the inventory "
              "(this one included); older ones are removed. Default: all.")
@click.option("--prometheus", "textfile", default=None, help="Write node_exporter textfile metrics here.")
@click.option("--data", multiple=True, help="key=value override, as for pyinfra.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def run(inventory_path: str, to: str | None, keep: int | None, textfile: str | None, data: tuple[str, ...],
        as_json: bool) -> None:
    """Export every Milvus collection (schema, indexes, rows) with a manifest of row counts and sha256s.

    Exit 0: backed up; 2: backed up, but a collection has fewer rows than in the previous backup
    (or is gone); 3: backed up, but removing older backups (--keep) failed; 1: no backup (nothing kept).
    """
    from gpufleet import backup_timer, data_backup

    result = _or_exit("backup failed, nothing kept", lambda: data_backup.backup(
        inventory_path, to, parse_data_overrides(data), keep))
    if textfile:
        backup_timer.write_metrics(textfile, result["collections"], result["dropped"])
    if as_json:
        click.echo(json.dumps(result))
    else:
        rows = ", ".join(f"{name} {n} rows" for name, n in result["collections"].items()) or "no collections"
        click.echo(f"{result['dir']}: {rows}")
        for path in result["removed"]:
            click.echo(f"removed {path} (--keep {keep})")
    for name, (before, now) in result["dropped"].items():
        click.echo(f"warning: {name} has {now} rows, {before} in the previous backup", err=True)
    if result["prune_error"]:
        click.echo(f"backup kept at {result['dir']}, but removing older backups (--keep {keep}) failed: "
                   f"{result['prune_error']}", err=True)
        sys.exit(3)
    sys.exit(2 if result["dropped"] else 0)


@backup.command("install-timer")
@click.argument("inventory_path", metavar="INVENTORY", callback=unit_value_option)
@click.option("--on-calendar", default="*-*-* 02:00:00", show_default=True, callback=on_calendar_option,
              help="systemd OnCalendar= expression.")
@click.option("--unit-dir", default="/etc/systemd/system", show_default=True)
@click.option("--backup-dir", default=None, callback=_timer_location,
              help="Where the backups go, a directory or s3://BUCKET/PREFIX (default: the Milvus host's "
              "milvus_backup_dir when each run starts, where gpufleet drift looks; another location here "
              "needs milvus_backup_dir set to it too).")
@click.option("--keep", type=click.IntRange(min=1), default=7, show_default=True)
@click.option("--textfile-dir", default="/var/lib/prometheus/node-exporter", show_default=True,
              callback=unit_value_option, help="node_exporter's textfile collector directory.")
@click.option("--no-enable", is_flag=True, help="Write the units only; do not reload systemd or enable the timer.")
def install_timer(inventory_path, on_calendar, unit_dir, backup_dir, keep, textfile_dir, no_enable) -> None:
    """Install the nightly Milvus backup as a systemd service + timer on this (control) host."""
    from gpufleet.backup_timer import install

    for path in install(inventory_path, on_calendar, unit_dir, backup_dir, keep, textfile_dir, enable=not no_enable):
        click.echo(f"wrote {path}")


@click.command()
@click.argument("inventory_path", metavar="INVENTORY")
@click.option("--from", "source", required=True, help="A backup's directory or s3:// location (gpufleet backup prints it).")
@click.option("--replace", is_flag=True, help="Replace collections that exist with rows (each is dropped once its "
              "restored copy holds the backup's rows).")
@click.option("--data", multiple=True, help="key=value override, as for pyinfra.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def restore(inventory_path: str, source: str, replace: bool, data: tuple[str, ...], as_json: bool) -> None:
    """Recreate a backup's collections on the fleet's Milvus and check their row counts."""
    from gpufleet import data_backup

    result = _or_exit("restore failed", lambda: data_backup.restore(
        inventory_path, source, replace, parse_data_overrides(data)))
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(f"restored from {result['dir']}: "
                   + (", ".join(f"{name} {n} rows" for name, n in result["collections"].items()) or "no collections"))
