"""``gpufleet doctor INVENTORY [--limit H] [--json] [--report FILE]``: why is this node unhealthy?"""

from __future__ import annotations

import sys

import click

from gpufleet.commands.validate import DATA_HELP
from gpufleet.fleet import parse_data_overrides
from gpufleet.settings import SettingsError, format_issues


@click.command()
@click.argument("inventory_path", metavar="INVENTORY")
@click.option("--limit", multiple=True, help="Host, group or glob; repeatable (as pyinfra's --limit).")
@click.option("--data", "data", multiple=True, metavar="KEY=VALUE", help=DATA_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print {ok, exit_code, nodes[{findings[], notes[]}]}.")
@click.option("--report", "report_file", metavar="FILE",
              help="Also write a paste-ready Markdown report (secrets, host names and addresses redacted).")
def doctor(inventory_path: str, limit: tuple[str, ...], data: tuple[str, ...], as_json: bool,
           report_file: str | None) -> None:
    """Walk the troubleshooting tree on each GPU node: findings with evidence and fix.

    Exit 0 healthy, 2 findings, 1 a node not checked."""
    from gpufleet.doctor import redact, render, runner

    try:
        run, fleet = runner.diagnose(inventory_path, limit, parse_data_overrides(data))
    except SettingsError as exc:
        click.echo(format_issues(exc.issues), err=True)
        sys.exit(1)
    if not run.nodes:  # a check of nothing must not pass as a clean check
        click.echo(f"no GPU node (group gpu_nodes) in {inventory_path}"
                   + (f" matching {', '.join(limit)}" if limit else ""), err=True)
        sys.exit(1)
    reported = {n.host: n.evidence.get("hostnames") or [] for n in run.nodes}
    redactor = redact.from_fleet(fleet, reported)
    if report_file:
        with open(report_file, "w", encoding="utf-8") as handle:
            handle.write(render.report_markdown(run, redactor, inventory=inventory_path))
    click.echo(render.render_json(run, redactor) if as_json else render.render_text(run, redactor))
    if report_file and not as_json:
        click.echo(f"report: {report_file} (secrets, host names and addresses redacted)")
    sys.exit(run.exit_code)
