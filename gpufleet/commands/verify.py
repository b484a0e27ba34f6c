"""``gpufleet verify INVENTORY [--limit ...] [--nccl] [--json]``: the per-host checklist, PCI to topology."""

from __future__ import annotations

import json
import sys

import click

from gpufleet.commands.validate import DATA_HELP
from gpufleet.fleet import parse_data_overrides
from gpufleet.settings import SettingsError, format_issues
from gpufleet.table import render_table

MARK = {"pass": "ok", "fail": "FAIL", "warn": "warn"}


@click.command()
@click.argument("inventory_path", metavar="INVENTORY")
@click.option("--limit", multiple=True, help="Host, group or glob; repeatable (as pyinfra's --limit).")
@click.option("--data", "data", multiple=True, metavar="KEY=VALUE", help=DATA_HELP)
@click.option("--nccl", is_flag=True,
              help="Last step: the NCCL acceptance test (all-reduce 1 MiB..1 GiB) in the node's vLLM image. "
                   "Needs the GPUs free: drain the node first.")
@click.option("--json", "as_json", is_flag=True, help="Print {ok, failures[], nodes[]}.")
def verify(inventory_path: str, limit: tuple[str, ...], data: tuple[str, ...], nccl: bool, as_json: bool) -> None:
    """Check each host: PCI -> driver -> toolkit -> NCCL -> topology [-> NCCL acceptance].

    Exit 0 pass, 2 fail, 1 unreachable."""
    from gpufleet import verify as ladder

    try:
        reports = ladder.verify(inventory_path, limit, parse_data_overrides(data), nccl=nccl)
    except SettingsError as exc:
        click.echo(format_issues(exc.issues), err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(ladder.as_json(reports), indent=2))
    else:
        rows = [[r.host, c.step, MARK.get(c.status, c.status), c.detail] for r in reports for c in r.checks]
        click.echo(render_table(["HOST", "STEP", "", "DETAIL"], rows))
        fixes = [(r.host, c) for r in reports for c in r.checks if c.fix and c.status != "pass"]
        for host, check in fixes:
            click.echo(f"\n{host} {check.step}: {check.fix}")
        failed = [r.host for r in reports if not r.ok]
        click.echo(f"\n{len(reports) - len(failed)}/{len(reports)} hosts passed" + (f"; failed: {', '.join(failed)}" if failed else ""))
    sys.exit(ladder.exit_code(reports))
