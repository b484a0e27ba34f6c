"""``gpufleet lab up|down|status|secure-boot``: the local fleet lab of stand-in bare-metal hosts."""

from __future__ import annotations

import json
import sys

import click

from gpufleet.table import render_table


@click.group()
def lab() -> None:
    """Start, stop and inspect the built-in fleet lab (see lab/README.md)."""


@lab.command()
@click.option("--nodes", default=2, show_default=True, help="Stand-in GPU nodes (gpu-node-1..N).")
@click.option("--lbs", default=1, show_default=True, help="Stand-in load balancers (lb-1..M).")
@click.option("--data-hosts", type=click.IntRange(0, 1), default=0, show_default=True,
              help="1: Milvus on a host of its own (db-1, group vector_db) instead of gpu-node-2.")
def up(nodes: int, lbs: int, data_hosts: int) -> None:
    """Start the lab (building cached images on first use) or adopt the running one."""
    from gpufleet.lab.control import LabError
    from gpufleet.lab.control import up as lab_up

    try:
        started = lab_up(nodes, lbs, data_hosts)
    except (LabError, ValueError, TimeoutError) as exc:
        click.echo(f"lab up failed: {exc}", err=True)
        sys.exit(1)
    click.echo(render_table(["HOST", "GROUP", "SSH"], [[h.name, h.group, f"127.0.0.1:{h.ssh_port}"] for h in started]))


@lab.command()
@click.option("--purge", is_flag=True, help="Also remove the cached lab images (next `up` is a cold build).")
def down(purge: bool) -> None:
    """Remove every container, volume, network and state file the lab created."""
    from gpufleet.lab.control import down as lab_down

    for item in lab_down(purge):
        click.echo(f"removed {item}")


@lab.command()
@click.option("--json", "as_json", is_flag=True)
def status(as_json: bool) -> None:
    """Show the lab's hosts and services. Exit 0 when all run, 1 otherwise."""
    from gpufleet.lab.control import status as lab_status

    report = lab_status()
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(render_table(["NAME", "GROUP", "SSH PORT", "STATE"],
                                [[h["name"], h["group"], h["ssh_port"], h["state"]] for h in report["hosts"]]
                                + [[s["name"], "service", "", s["state"]] for s in report["services"]]))
    sys.exit(0 if report["up"] else 1)


@lab.command()
def welcome() -> None:
    """Print the lab's URLs on 127.0.0.1 and what to try next (`make deploy` ends with it)."""
    from gpufleet.lab.welcome import welcome_text

    click.echo(welcome_text())


@lab.command("secure-boot")
@click.argument("node")
@click.argument("state", type=click.Choice(["on", "off"]))
def secure_boot(node: str, state: str) -> None:
    """Turn a lab node's stand-in Secure Boot on or off: with it on, the driver does not load at the next boot."""
    from gpufleet.lab.faults import secure_boot as switch

    switch(node, state == "on")
    click.echo(f"{node}: Secure Boot {state} (the stand-in driver loads, or not, at the next boot)")
