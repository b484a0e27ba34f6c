"""``gpufleet bench serve INVENTORY``: throughput and latency of the serving fleet, kept per run."""

from __future__ import annotations

import json
import sys

import click

from gpufleet.commands.validate import DATA_HELP
from gpufleet.fleet import parse_data_overrides
from gpufleet.settings import SettingsError, format_issues


@click.group()
def bench() -> None:
    """Benchmarks of the fleet (`gpufleet bench serve INVENTORY`)."""


def _levels(values: tuple[str, ...]) -> list[int]:
    levels = [int(v) for value in values for v in value.split(",") if v.strip()]
    if not levels or any(level < 1 for level in levels):
        raise click.BadParameter("positive integers, e.g. --concurrency 1 --concurrency 8 or --concurrency 1,8,32")
    return levels


@bench.command("serve")
@click.argument("inventory_path", metavar="INVENTORY")
@click.option("--through", type=click.Choice(["lb", "node"]), default="lb", show_default=True,
              help="Benchmark each load balancer, or each vLLM replica directly (finds the slow node).")
@click.option("--concurrency", "concurrency", multiple=True, default=("1", "8"), show_default=True,
              help="Requests in flight; repeatable or comma-separated (one level after the other).")
@click.option("--input-len", default=512, show_default=True, type=click.IntRange(1), help="Prompt tokens.")
@click.option("--output-len", default=128, show_default=True, type=click.IntRange(1), help="Tokens generated.")
@click.option("--requests", type=click.IntRange(1), help="Requests per level (default: max(20, 4 x concurrency)).")
@click.option("--limit", multiple=True, help="Host name or glob (load balancers or nodes); repeatable.")
@click.option("--url", "urls", multiple=True, metavar="URL",
              help="Benchmark this endpoint instead of the inventory's (e.g. the lab's http://127.0.0.1:<port>).")
@click.option("--warn-below", default=20.0, show_default=True, type=click.FloatRange(0, 100),
              help="Warn for a target this many % below the fleet median output tok/s.")
@click.option("--results-dir", metavar="DIR", help="Where runs are kept (default $GPUFLEET_STATE_DIR/bench or "
                                                    "~/.local/state/gpufleet/bench).")
@click.option("--compare", "compare_file", metavar="FILE", type=click.Path(exists=True, dir_okay=False),
              help="An earlier run's JSON: print the change in output tok/s and TTFT.")
@click.option("--data", "data", multiple=True, metavar="KEY=VALUE", help=DATA_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
def serve(inventory_path, through, concurrency, input_len, output_len, requests, limit, urls, warn_below,
          results_dir, compare_file, data, as_json) -> None:
    """Measure output tok/s, req/s, TTFT and inter-token latency p50/p99 from streaming completions.

    Exit 0 all answered and no target slow, 2 failed requests or a slow target, 1 could not run."""
    from gpufleet.fleet import load_fleet
    from gpufleet.servebench import results, run

    try:
        fleet = load_fleet(inventory_path, parse_data_overrides(data))
    except SettingsError as exc:
        click.echo(format_issues(exc.issues), err=True)
        sys.exit(1)
    endpoints = ([run.Target(url, url) for url in urls] if urls else run.targets(fleet, through, limit))
    if not endpoints:
        click.echo(f"no {'load balancer' if through == 'lb' else 'vLLM replica'} to benchmark in {inventory_path}"
                   + (f" matching {', '.join(limit)}" if limit else ""), err=True)
        sys.exit(1)
    model, api_key = run.model_and_key(fleet)
    outcome = run.benchmark(endpoints, model, _levels(concurrency), requests, input_len, output_len, api_key,
                            warn_below, "url" if urls else through)
    path = run.keep(outcome, results_dir)
    if as_json:
        click.echo(json.dumps({**outcome, "saved": str(path)}, indent=2))
    else:
        click.echo(results.render(outcome))
        if compare_file:
            with open(compare_file, encoding="utf-8") as handle:
                click.echo("\n" + results.compare(json.load(handle), outcome))
        click.echo(f"\nsaved: {path}")
    sys.exit(run.exit_code(outcome))
