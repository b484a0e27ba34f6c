"""``gpufleet drift INVENTORY``: the nightly comparison of every host with the repository."""

from __future__ import annotations

import json
import sys

import click

from gpufleet.commands.validate import DATA_HELP
from gpufleet.control_timer import on_calendar_option, unit_value_option
from gpufleet.fleet import parse_data_overrides
from gpufleet.settings import SettingsError, format_issues


class _DriftGroup(click.Group):
    """`gpufleet drift INVENTORY ...` runs the check; `gpufleet drift install-timer ...` the installer."""

    default_command = "check"  # what an argument that names no subcommand runs

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DriftGroup)
def drift() -> None:
    """Compare every host with the repository (`gpufleet drift INVENTORY`), or install the nightly timer."""


@drift.command("check")
@click.argument("inventory_path", metavar="INVENTORY")
@click.option("--limit", multiple=True, help="Host, group or glob; repeatable (as pyinfra's --limit).")
@click.option("--data", "data", multiple=True, metavar="KEY=VALUE", help=DATA_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--prometheus", "prometheus_file", metavar="FILE", help="Write textfile-collector metrics.")
@click.option("--junit", "junit_file", metavar="FILE", help="Write a JUnit XML report (one case per host).")
@click.option("--report", "report_file", metavar="FILE", help="Also write the JSON report to FILE.")
@click.option("--fix", is_flag=True, help="Re-converge the drifted hosts (only those) after reporting; refused "
              "when the checkout has uncommitted changes.")
@click.option("--allow-dirty", is_flag=True, help="Let --fix deploy a checkout with uncommitted changes.")
@click.option("--counters", "counters_file", metavar="FILE",
              help="Where the last run's XID and restart counters are kept (default: the state directory).")
@click.option("--read-timeout", type=click.IntRange(10, 3600), default=None, metavar="SECONDS",
              help="Give up on any one read after this long and report the host not checked (default 300).")
def check(inventory_path, limit, data, as_json, prometheus_file, junit_file, report_file, fix, allow_dirty,
          counters_file, read_timeout) -> None:
    """Report every host whose state differs from the repository. Exit 0 clean, 2 drift, 1 not checked."""
    from gpufleet import drift as engine

    counters = counters_file if counters_file else engine.DEFAULT_COUNTERS
    try:
        report = engine.check(inventory_path, limit, parse_data_overrides(data), fix=fix, allow_dirty=allow_dirty,
                              counters=counters, read_timeout=read_timeout)
    except SettingsError as exc:
        click.echo(format_issues(exc.issues), err=True)
        sys.exit(1)
    if report.fix and report.fix["refused"]:
        click.echo(f"gpufleet drift: --fix refused: {report.fix['refused']}", err=True)
    payload = json.dumps(report.as_dict(), indent=2)
    if report_file:
        from gpufleet.private_files import write_private

        write_private(report_file, payload + "\n")
    if prometheus_file:
        engine.write_prometheus(report, prometheus_file)
    if junit_file:
        engine.write_junit(report, junit_file)
    click.echo(payload if as_json else engine.render_text(report))
    sys.exit(report.exit_code)


@drift.command("install-timer")
@click.argument("inventory_path", metavar="INVENTORY", callback=unit_value_option)
@click.option("--on-calendar", default="*-*-* 03:00:00", show_default=True, callback=on_calendar_option,
              help="systemd OnCalendar= expression.")
@click.option("--unit-dir", default="/etc/systemd/system", show_default=True)
@click.option("--state-dir", default="/var/lib/gpufleet/drift", show_default=True, callback=unit_value_option,
              help="Where last.json is kept.")
@click.option("--textfile-dir", default="/var/lib/prometheus/node-exporter", show_default=True,
              callback=unit_value_option, help="node_exporter's textfile collector directory.")
@click.option("--fix", is_flag=True, help="Let the nightly run re-converge drifted hosts (off by default); "
              "each run refuses a checkout with uncommitted changes.")
@click.option("--allow-dirty", is_flag=True, help="With --fix: let the nightly run deploy uncommitted changes too.")
@click.option("--no-enable", is_flag=True, help="Write the units only; do not reload systemd or enable the timer.")
def install_timer(inventory_path, on_calendar, unit_dir, state_dir, textfile_dir, fix, allow_dirty, no_enable) -> None:
    """Install the nightly drift check as a systemd service + timer on this (control) host."""
    from gpufleet.drift_timer import install

    if allow_dirty and not fix:
        raise click.UsageError("--allow-dirty only means something with --fix")
    for path in install(inventory_path, on_calendar, unit_dir, state_dir, textfile_dir, fix, enable=not no_enable,
                        allow_dirty=allow_dirty):
        click.echo(f"wrote {path}")
