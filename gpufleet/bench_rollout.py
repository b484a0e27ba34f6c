"""`make bench-rollout`: a rollout's wall time against the time its replicas were actually down.

On a converged fleet (the lab by default), in one run:

1. roll a replica-recreating change (``vllm_max_model_len``) over every node with the real
   ``gpufleet rollout --yes --json`` command, and time it (wall);
2. read, from each node's Docker, how long each replica was away: from the old container's
   ``die`` event to the new container's ``Application startup complete`` log line
   (restart-to-ready; the completion the rollout then checks adds well under a second);
3. roll back to the repository's values and measure the same again.

It prints one row per rollout: wall time, the sum of restart-to-ready, their ratio (goal <= 1.2:
what the rollout adds on top of restarting the replicas one after another), and where each node's
time went (drain / update / validate / undrain, from the rollout's state file). The ratio compares
two numbers of the same run; absolute times depend on the machine (CPU vLLM engines in the lab).

    python -m gpufleet.bench_rollout [INVENTORY] [--max-model-len N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from gpufleet import PROJECT_ROOT


def run_rollout(inventory: str, state_dir: str, *data: str) -> tuple[float, float, dict]:
    """``(started, wall seconds, the --json report)`` of one real ``gpufleet rollout``."""
    args = [str(Path(sys.executable).parent / "gpufleet"), "rollout", inventory, "--yes", "--json"]
    for item in data:
        args += ["--data", item]
    started = time.time()
    run = subprocess.run(args, cwd=PROJECT_ROOT, capture_output=True, text=True,
                         env={**os.environ, "GPUFLEET_STATE_DIR": state_dir})
    wall = time.time() - started
    if run.returncode != 0 or not run.stdout.strip().startswith("{"):
        raise SystemExit(f"rollout failed (exit {run.returncode}):\n{run.stderr[-3000:]}")
    return started, wall, json.loads(run.stdout)


def _epoch(rfc3339: str) -> float:
    # Docker writes nanoseconds; Python's fromisoformat takes at most microseconds.
    head, _, frac = rfc3339.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "+00:00").timestamp() + float("0." + (frac or "0"))


def restart_to_ready(inventory: str, since: float) -> dict[str, float]:
    """``{replica: seconds from the old container's death to the new one's start-up complete}``."""
    from gpufleet.fleet import replicas_of
    from gpufleet.remote import connected, shell

    out: dict[str, float] = {}
    with connected(inventory) as (_, fleet, reachable, _unreachable):
        for host in reachable:
            if host.name not in {n.name for n in fleet.nodes}:
                continue
            for r in replicas_of(fleet.hosts[host.name]):
                name = f"vllm-{r.name}"
                ok, died = shell(host, f"docker events --since {since:.0f} --until {time.time():.0f} "
                                       f"--filter container={name} --filter event=die --format '{{{{.TimeNano}}}}'")
                ok2, ready = shell(host, f"docker logs --timestamps {name} 2>&1 | grep -m1 'Application startup complete'")
                if not (ok and ok2 and died.split() and ready.split()):
                    raise SystemExit(f"{r.name}: no die event or start-up line since the rollout began")
                out[r.name] = _epoch(ready.split()[0]) - int(died.split()[0]) / 1e9
    return out


def phases(report: dict) -> dict[str, dict[str, float]]:
    """``{node: {state: seconds spent in it}}`` from the rollout's history."""
    out = {}
    for name, node in report["nodes"].items():
        history = node["history"]
        out[name] = {state: round(history[i + 1][1] - t, 1) for i, (state, t) in enumerate(history[:-1])}
    return out


def measure(inventory: str, label: str, *data: str) -> dict:
    with tempfile.TemporaryDirectory() as state_dir:
        started, wall, report = run_rollout(inventory, state_dir, *data)
    down = restart_to_ready(inventory, started)
    return {"rollout": label, "nodes": len(report["nodes"]), "wall_s": round(wall, 1),
            "restart_to_ready_s": {k: round(v, 1) for k, v in down.items()},
            "sum_restart_to_ready_s": round(sum(down.values()), 1),
            "ratio": round(wall / sum(down.values()), 2) if down else None, "phases": phases(report)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inventory", nargs="?", default="inventory/lab.py")
    parser.add_argument("--max-model-len", type=int, default=384, help="the changed value rolled out first")
    args = parser.parse_args(argv)
    rows = [measure(args.inventory, f"vllm_max_model_len={args.max_model_len}",
                    f"vllm_max_model_len={args.max_model_len}"),
            measure(args.inventory, "back to the repository's values")]
    print(f"{'rollout':<34} {'nodes':>5} {'wall s':>7} {'sum restart-to-ready s':>23} {'ratio':>6}")
    for row in rows:
        print(f"{row['rollout']:<34} {row['nodes']:>5} {row['wall_s']:>7} {row['sum_restart_to_ready_s']:>23} "
              f"{row['ratio']:>6}")
    for row in rows:
        for node, spent in row["phases"].items():
            print(f"  {row['rollout'][:30]:<30} {node:<12} " + "  ".join(f"{s} {t}s" for s, t in spent.items()))
    print(json.dumps(rows), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
