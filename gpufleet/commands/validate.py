"""``gpufleet validate INVENTORY [--data key=value ...]``."""

from __future__ import annotations

import json
import sys

import click

from gpufleet.fleet import load_fleet, parse_data_overrides
from gpufleet.settings import SettingsError, format_issues

DATA_HELP = "Override data as pyinfra's --data does (key=value, JSON values parsed); repeatable."


@click.command()
@click.argument("inventory_path", metavar="INVENTORY")
@click.option("--data", "data", multiple=True, metavar="KEY=VALUE", help=DATA_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print {ok, errors[], warnings[]} as JSON.")
def validate(inventory_path: str, data: tuple[str, ...], as_json: bool) -> None:
    """Check every host's data; print every error at once. Exit 0 valid, 1 invalid."""
    try:
        fleet = load_fleet(inventory_path, parse_data_overrides(data))
    except SettingsError as exc:
        errors = [i for i in exc.issues if i.severity == "error"]
        warnings = [i for i in exc.issues if i.severity == "warning"]
        if as_json:
            click.echo(json.dumps({"ok": False, "errors": [i.as_dict() for i in errors],
                                   "warnings": [i.as_dict() for i in warnings]}, default=str))
        else:
            click.echo(format_issues(exc.issues), err=True)
            click.echo(f"\n{len(errors)} error(s) in {inventory_path}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps({"ok": True, "errors": [],
                               "warnings": [i.as_dict() for i in fleet.warnings]}, default=str))
    else:
        if fleet.warnings:
            click.echo(format_issues(fleet.warnings), err=True)
        click.echo(f"{inventory_path}: {len(fleet.hosts)} hosts valid "
                   f"({len(fleet.nodes)} GPU nodes, {len(fleet.replicas)} replicas, "
                   f"{len(fleet.load_balancers)} load balancers"
                   + (f", Milvus on {fleet.vector_db.name})" if fleet.vector_db else ")"))
