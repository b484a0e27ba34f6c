"""`make bench-reads`: which of a host's remembered reads cost its time on the host.

A no-op converge reads a host once, in the one prefetch command (operations/fact_prefetch.py),
which runs every fact the host's plans asked for (in ``READ_LANES`` concurrent lanes, each under one
time limit: operations/read_lanes.py). This runs the same commands one after another, as in a lane,
built the same way from the same list (``$GPUFLEET_CACHE_DIR/fact-reads/<host>.json``, filled by
any earlier deploy), in one SSH command that times each on the host (``date +%s%N`` around it), and
prints the costliest, their sum, and the sum by fact class. Read-only: the facts only read.

    python -m gpufleet.bench_reads inventory/lab.py gpu-node-1 [--top 15]
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()  # before anything opens a socket, as pyinfra's CLI does

import argparse  # noqa: E402
import json  # noqa: E402
import secrets  # noqa: E402
import sys  # noqa: E402
from collections import Counter  # noqa: E402


def timed_reads(inventory: str, node: str) -> list[tuple[str, float]]:
    """``[("Fact(arguments)", seconds on the host)]`` for every remembered read of ``node`` (run with
    the connection's own privileges: the lab's and a root deploy's)."""
    from pyinfra.api import QuoteString, StringCommand

    from gpufleet.host_reads import READ_TIMEOUT_S
    from gpufleet.remote import connected
    from operations.fact_prefetch import (_fact_command, _fact_kwargs, _prefetchable, cache_file, prefetch_arguments,
                                          remembered_fact_class)
    from operations.facts.util import KILL_AFTER_S
    from operations.read_lanes import as_in_a_lane

    entries = json.loads(cache_file(node).read_text())["facts"]
    with connected(inventory, [node]) as (state, _, reachable, _unreachable):
        if not reachable:
            raise SystemExit(f"{node} is unreachable over SSH")
        host = reachable[0]
        keys, parts = [], []
        mark = f"__gpufleet_time_{secrets.token_hex(4)}"
        for entry in entries:
            cls = remembered_fact_class(entry["fact"])  # None: a class this version no longer has
            if cls is None or not _prefetchable(cls):
                continue
            asked = prefetch_arguments(cls, entry["kwargs"], node)  # as the prefetch reads it
            fact_kwargs, _ = _fact_kwargs(state, host, cls, [], asked)
            command = _fact_command(cls(), dict(fact_kwargs))
            if command is None:
                continue
            parts += ["t0=$(date +%s%N);", *as_in_a_lane(command), ">/dev/null", "2>&1;",
                      "echo", f'"{mark}:{len(keys)}:$(( $(date +%s%N) - t0 ))";']
            arguments = ", ".join(f"{k}={v!r}" for k, v in sorted(asked.items()))
            keys.append(f"{entry['fact'].rsplit('.', 1)[1]}({arguments})")
        # As in a lane, the reads have no limit of their own: the whole command has one on the host
        # (`timeout` kills what is left of it) and one on the control side.
        timed = StringCommand("timeout", "-k", str(KILL_AFTER_S), str(READ_TIMEOUT_S), "sh", "-c",
                              QuoteString(StringCommand(*parts)))
        ok, output = host.run_shell_command(timed, print_output=False, print_input=False,
                                            _timeout=READ_TIMEOUT_S + 30)
    if not ok:
        raise SystemExit(f"the timed reads failed on {node}: {output.stderr[-500:]}")
    found = []
    for line in output.stdout_lines:
        if line.startswith(f"{mark}:"):
            _, index, nanos = line.split(":")
            found.append((keys[int(index)], int(nanos) / 1e9))
    return found


def main(inventory: str, node: str, top: int) -> int:
    from gpufleet.table import render_table

    found = timed_reads(inventory, node)
    total = sum(s for _, s in found)
    print(f"{node}: {len(found)} remembered reads, {total:.2f} s on the host, one after another\n")
    print(render_table(["READ", "SECONDS", "SHARE"], [[key[:100], f"{s:.3f}", f"{100 * s / total:.0f}%"]
                                                      for key, s in sorted(found, key=lambda x: -x[1])[:top]]))
    by_class: Counter = Counter()
    for key, s in found:
        by_class[key.split("(", 1)[0]] += s
    print("\nBy fact class:")
    print(render_table(["FACT", "SECONDS", "SHARE"], [[name, f"{s:.3f}", f"{100 * s / total:.0f}%"]
                                                      for name, s in by_class.most_common(top)]))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m gpufleet.bench_reads", description=__doc__.split("\n\n")[0])
    parser.add_argument("inventory")
    parser.add_argument("node")
    parser.add_argument("--top", type=int, default=15)
    options = parser.parse_args()
    sys.exit(main(options.inventory, options.node, options.top))
