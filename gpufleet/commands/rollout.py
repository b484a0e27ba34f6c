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
@click.option("--canary", default=1, show_default=True, help="Nodes rolled first, alone, before the others.")
@click.option("--resume", is_flag=True, help="Continue the last unfinished rollout of INVENTORY from its state file.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before starting.")
@click.option("--json", "as_json", is_flag=True, help="Print the final report as JSON.")
def rollout(inventory_path, data, limit, max_unavailable, canary, resume, yes, as_json) -> None:
    """Roll a change across live nodes: drain, update, validate, undrain, one batch at a time.

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
        r.save()
    except SettingsError as exc:
        click.echo("invalid inventory data; nothing was changed:\n" + format_issues(exc.issues), err=True)
        sys.exit(rl.EXIT_CANNOT_START)
    except rl.RolloutError as exc:
        click.echo(f"rollout: {exc}", err=True)
        sys.exit(rl.EXIT_CANNOT_START)
    code = rl.Runner(r, say).run()
    say(f"{r.id}: " + ("done" if code == rl.EXIT_DONE else "stopped") + f" in {time.time() - r.started:.0f}s; "
        + ", ".join(f"{n} {v.state}" for n, v in r.nodes.items()) + f" (state: {r.path()})")
    if as_json:
        click.echo(json.dumps(rl.report(r), indent=2))
    sys.exit(code)


def _plan(inventory_path, overrides, limit, canary, max_unavailable, say, steps, rl):
    rollout_id = rl.new_id()
    planned = steps.plan(inventory_path, overrides, limit, rollout_id)
    if planned["blocked"]:
        raise rl.RolloutError("; ".join(f"{h}: {why}" for h, why in sorted(planned["blocked"].items())))
    fleet = planned["fleet"]
    changed = [n.name for n in fleet.nodes if n.name in planned["nodes"]]
    if planned["unreachable"]:
        say(f"unreachable, not rolled: {', '.join(planned['unreachable'])}")
        if not changed:
            raise rl.RolloutError("no node could be planned")
    if planned["lbs"]:
        say("load balancers with changes (converge them with a plain deploy): "
            + "; ".join(f"{h}: {', '.join(c)}" for h, c in planned["lbs"].items()))
    if planned["data"]:
        say("the Milvus host has changes; a host of its own is not rolled: back it up (`gpufleet backup "
            f"{inventory_path}`), then converge it with a plain deploy (--limit): "
            + "; ".join(f"{h}: {', '.join(c)}" for h, c in planned["data"].items()))
    if not changed:
        say("nothing to roll out: every node matches the repository")
        return None
    batches = rl.make_batches(changed, canary, max_unavailable)
    live = planned["live"]  # {node: replicas running now, named in the inventory or being retired}
    # What a batch takes out of rotation: the live replicas of its disruptive nodes (a node
    # changed in place is never drained, and a replica that is down carries nothing).
    taken_out = {n: live.get(n, []) for n in changed if planned["nodes"][n][1]}
    rl.check_capacity(batches, taken_out, [r for names in live.values() for r in names])
    nodes = {n: rl.NodeRollout(n, changes=planned["nodes"][n][0], kind=planned["nodes"][n][1]) for n in changed}
    r = rl.Rollout(id=rollout_id, inventory=inventory_path, overrides=overrides, holder=rl.holder(),
                   since=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), canary=canary,
                   max_unavailable=max_unavailable, nodes=nodes, batches=batches)
    say(f"rollout {r.id}: {len(changed)} node(s) in {len(batches)} batch(es): "
        + " | ".join(", ".join(b) for b in batches))
    for n in changed:
        kind = {rl.REPLICAS: "drain, update, validate, undrain (rolled back on failure)",
                rl.GPU_STACK: "drain, stop GPU containers, update, validate, undrain (never rolled back)",
                }.get(nodes[n].kind, "update in place (nothing interrupted)")
        say(f"  {n}: {kind}; changes: {', '.join(nodes[n].changes)}")
    return r
