"""``gpufleet rollout INVENTORY``: roll a change across a live fleet node by node (gpufleet/rollout.py)."""

from __future__ import annotations

import json
import sys
import time

import click

from gpufleet.commands.validate import DATA_HELP
from gpufleet.fleet import parse_data_overrides
from gpufleet.settings import SettingsError, format_issues


@click.command()
@click.argument("inventory_path", metavar="INVENTORY")
@click.option("--data", "data", multiple=True, metavar="KEY=VALUE", help=DATA_HELP)
@click.option("--limit", multiple=True, help="Only these nodes (host, group or glob; repeatable).")
@click.option("--max-unavailable", default=1, show_default=True, help="Nodes drained at once after the canary.")
@click.option("--canary", default=1, show_default=True,
              help="GPU nodes rolled first, alone, before the others (after the Milvus host of its own).")
@click.option("--resume", is_flag=True, help="Continue the last unfinished rollout of INVENTORY from its state file.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before starting.")
@click.option("--json", "as_json", is_flag=True, help="Print the final report as JSON.")
def rollout(inventory_path, data, limit, max_unavailable, canary, resume, yes, as_json) -> None:
    """Roll a change across live nodes: drain, update, validate, undrain, one batch at a time.

    A Milvus host of its own (group vector_db) with changes goes first, alone: backed up when
    Milvus is recreated, updated in place, Milvus's health and row counts checked.

    Exit 0 done (or nothing to do), 2 stopped after a failure (the fleet keeps serving),
    1 could not start (bad input, a lock held by another rollout, nothing reachable).
    """
    from gpufleet import rollout as rl
    from gpufleet import rollout_steps

    say = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    try:
        overrides = parse_data_overrides(data)
        if resume:
            r = rl.last_unfinished(inventory_path)
            if r is None:
                raise rl.RolloutError(f"no unfinished rollout of {inventory_path} in {rl.state_dir()}")
            if data or limit:
                raise rl.RolloutError("--resume continues with the rollout's own --data and nodes; drop them")
            say(f"resuming {r.id} (since {r.since}): " + ", ".join(f"{n} {v.state}" for n, v in r.nodes.items()))
            r.finished = r.exit_code = None
        else:
            r = _plan(inventory_path, overrides, tuple(limit), canary, max_unavailable, say, rollout_steps, rl)
            if r is None:
                sys.exit(rl.EXIT_DONE)
            if not yes and not click.confirm("Start the rollout?", default=False, err=as_json):
                sys.exit(rl.EXIT_CANNOT_START)
        run_lock = rl.RunLock(r)  # before the state file is written: another process may be running it
        r.save()
    except SettingsError as exc:
        click.echo("invalid inventory data; nothing was changed:\n" + format_issues(exc.issues), err=True)
        sys.exit(rl.EXIT_CANNOT_START)
    except rl.RolloutError as exc:
        click.echo(f"rollout: {exc}", err=True)
        sys.exit(rl.EXIT_CANNOT_START)
    with run_lock:
        code = rl.Runner(r, say).run()
    say(f"{r.id}: " + ("done" if code == rl.EXIT_DONE else "stopped") + f" in {time.time() - r.started:.0f}s; "
        + ", ".join(f"{n} {v.state}" for n, v in r.nodes.items()) + f" (state: {r.path()})")
    if as_json:
        click.echo(json.dumps(rl.report(r), indent=2))
    sys.exit(code)


def _plan(inventory_path, overrides, limit, canary, max_unavailable, say, steps, rl):
    from gpufleet.rollout_plan import describe, rollout_nodes

    rollout_id = rl.new_id()
    planned = steps.plan(inventory_path, overrides, limit, rollout_id)
    if planned["blocked"]:
        raise rl.RolloutError("; ".join(f"{h}: {why}" for h, why in sorted(planned["blocked"].items())))
    if planned["unreachable"]:
        say(f"unreachable, not rolled: {', '.join(planned['unreachable'])}")
        if not planned["nodes"] and not planned["data"]:
            raise rl.RolloutError("no node could be planned")
    if planned["lbs"]:
        say("load balancers with changes (converge them with a plain deploy): "
            + "; ".join(f"{h}: {', '.join(c)}" for h, c in planned["lbs"].items()))
    nodes, batches = rollout_nodes(planned, canary, max_unavailable)
    if not nodes:
        say("nothing to roll out: every node matches the repository")
        return None
    r = rl.Rollout(id=rollout_id, inventory=inventory_path, overrides=overrides, holder=rl.holder(),
                   since=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), canary=canary,
                   max_unavailable=max_unavailable, nodes=nodes, batches=batches)
    say(f"rollout {r.id}: {len(nodes)} host(s) in {len(batches)} batch(es): "
        + " | ".join(", ".join(b) for b in batches))
    for name, node in nodes.items():
        say(f"  {describe(node, milvus_host=name in planned['data'])}")
    return r
