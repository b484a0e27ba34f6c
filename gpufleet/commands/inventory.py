"""``gpufleet inventory INVENTORY [--json]``: the nodes and load-balanced replicas, as declared."""

from __future__ import annotations

import json
import sys

import click

from gpufleet.commands.validate import DATA_HELP
from gpufleet.fleet import load_fleet, parse_data_overrides
from gpufleet.settings import SettingsError, format_issues
from gpufleet.table import render_table


@click.command()
@click.argument("inventory_path", metavar="INVENTORY")
@click.option("--data", "data", multiple=True, metavar="KEY=VALUE", help=DATA_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print nodes, load balancers and replicas as JSON.")
def inventory(inventory_path: str, data: tuple[str, ...], as_json: bool) -> None:
    """List nodes, every load-balanced replica (node, GPUs, port), the Milvus host and the apps."""
    try:
        fleet = load_fleet(inventory_path, parse_data_overrides(data))
    except SettingsError as exc:
        click.echo(format_issues(exc.issues), err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(fleet.as_dict(), indent=2))
        return
    click.echo(render_table(
        ["NODE", "ADDRESS", "GPUS", "GPU", "REPLICAS"],
        [[n.name, n.address, n.settings.gpu_count, n.settings.gpu_name,
          ", ".join(r["name"] for r in fleet.as_dict()["replicas"] if r["node"] == n.name)]
         for n in fleet.nodes],
    ))
    click.echo()
    click.echo(render_table(
        ["REPLICA", "NODE", "ADDRESS", "GPUS", "PORT"],
        [[r.name, r.node, r.address, ",".join(map(str, r.gpus)), r.port] for r in fleet.replicas],
    ))
    if fleet.load_balancers:
        click.echo()
        click.echo(render_table(
            ["LOAD BALANCER", "ADDRESS", "PORT"],
            [[h.name, h.address, h.settings.lb_port] for h in fleet.load_balancers],
        ))
    if fleet.vector_db or fleet.app_members:
        db = fleet.vector_db
        click.echo()
        click.echo(render_table(
            ["DATA TIER", "HOST", "ENDPOINT"],
            ([["milvus", db.name, f"{db.milvus_address}:{db.settings.milvus_port}"]] if db else [])
            + [["rag app", m["name"], f"{m['address']}:{m['port']}"] for m in fleet.app_members],
        ))
