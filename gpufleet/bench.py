"""`make bench`: how long a fleet-wide run takes against the lab, and how many commands it sends.

For N lab GPU nodes (default 1, 2, 4; plus the load balancer), on a converged lab, measures
in one process:

  (a) floor     connect to every host and read one fact (pyinfra's minimum)
  (b) converge  a no-op converge of the whole stack (deploy.py planned and executed, nothing changes)
  (c) drift     `gpufleet drift` (the same plan plus the runtime checks; read-only)

and prints the wall times, (b)/(a), (c)/(b), N=max/N=min for each, and the commands sent per host
(every shell command pyinfra runs over SSH, counted at the connector). Targets from the issue:
(b)/(a) <= 2, (c)/(b) <= 1.2, N=4/N=1 <= 1.3. Timings are noisy on shared machines: each number is
the median of --repeat runs, and the ratios come from the same run.

Options: ``--lanes 1,4`` measures each size once per number of concurrent reads in the prefetch
(operations/fact_prefetch.READ_LANES; 1 is the one-after-another read of earlier versions), and
``--as-is`` measures the lab as deployed (its size, its TP=2 replicas) without reshaping it:
``python -m gpufleet.bench --as-is --lanes 1,4 2``. ``--timeline`` prints, for one converge and one
drift of the lab as deployed (after a warm-up of each), every SSH command with its host, start and
end, and the run's wall and control-process CPU time: the critical path, host by host.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()  # before anything opens a socket, as pyinfra's CLI does

import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from gpufleet.ssh_counting import counting, recording, timeline_lines  # noqa: E402

INVENTORY = "inventory/lab.py"
# Four CPU vLLM engines at TP=2 need ~20 GiB: more than this 24 GiB machine has beside the rest.
# The bench measures the control plane, which TP does not change, so every size runs TP=1 replicas.
OVERRIDES = {
    "vllm_tensor_parallel_size": 1,
    "vllm_env": {"VLLM_CPU_KVCACHE_SPACE": "1", "TORCHDYNAMO_DISABLE": "1",
                 "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"},
}


def overrides() -> dict:
    """The bench's data on top of the lab's: none when it measures the lab as it is (``--as-is``)."""
    return {} if AS_IS else OVERRIDES


AS_IS = False  # --as-is: measure the lab as deployed (its size, its TP), without reshaping it


def floor() -> None:
    from pyinfra.facts.server import Hostname

    from gpufleet.remote import connected, run_parallel

    with connected(INVENTORY, overrides=overrides()) as (state, _, reachable, _unreachable):
        run_parallel(state, reachable, lambda h: h.get_fact(Hostname))


def converge(setup: bool = False) -> None:
    """A converge of the whole lab; ``setup``: the one before anything is measured, a maintenance
    window (the bench's TP=1 replicas replace the lab's, which the serving gate refuses otherwise)."""
    from gpufleet.deploy_run import execute, planned

    data = {**overrides(), "allow_serving_disruption": True} if setup else overrides()
    with planned(INVENTORY, overrides=data, check_for_changes=False) as plan:
        results = execute(plan, [h.name for h in plan.hosts])
    if not all(results.values()):
        raise RuntimeError(f"converge failed: {results}")


def drift() -> None:
    from gpufleet.drift import check

    report = check(INVENTORY, overrides=overrides())
    if report.exit_code != 0:  # drifted, or not checked (unreachable, a read that failed): say which and why
        found = report.as_dict()
        unchecked = {h["host"]: h["error"] for h in found["hosts"] if h["host"] in found["unchecked_hosts"]}
        raise RuntimeError(f"the lab is not clean: drifted {found['drifted_hosts']}, not checked {unchecked}")


def lab_host_ids() -> list[str]:
    from gpufleet.lab import hosts
    from gpufleet.lab.control import docker_client
    from gpufleet.lab.topology import LABEL

    return [c.id for c in hosts.lab_containers(docker_client()) if c.labels.get(LABEL) == "host"]


def measure(fn, repeat: int) -> tuple[float, float, float | None]:
    """Median wall seconds, commands per host, and CPU seconds the lab's hosts spent meanwhile
    (they share this machine's cores with the control process: the fleet-size ratio reads them)."""
    from gpufleet.bench_scale import container_cpu_seconds

    ids = lab_host_ids()
    times, per_host, host_cpu = [], [], []
    for _ in range(repeat):
        with counting() as counts:
            before = container_cpu_seconds(ids)
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
            after = container_cpu_seconds(ids)
        per_host.append(max(counts.values()) if counts else 0)
        if before is not None and after is not None:
            host_cpu.append(after - before)
    return statistics.median(times), statistics.median(per_host), statistics.median(host_cpu) if host_cpu else None


def one_size(n: int, repeat: int, lanes: int) -> dict:
    """Bring the lab to N nodes, converge it (not measured), then measure (a), (b), (c) with the
    prefetch reading ``lanes`` facts at a time on each host (operations/fact_prefetch.READ_LANES)."""
    from gpufleet.lab.control import up
    from operations import fact_prefetch

    if not AS_IS:
        up(n, 1)
        converge(setup=True)
    fact_prefetch.READ_LANES = lanes
    a, ca, ha = measure(floor, repeat)
    b, cb, hb = measure(converge, repeat)
    c, cc, hc = measure(drift, repeat)
    return {"nodes": n, "lanes": lanes, "floor": a, "converge": b, "drift": c, "cmds": [ca, cb, cc],
            "hosts_cpu": [ha, hb, hc]}


def timeline() -> int:
    """``--timeline``: one converge and one drift of the lab as it is, command by command."""
    import resource

    global AS_IS
    AS_IS = True
    for name, run in (("converge", converge), ("drift", drift)):
        run()  # the warm-up: a first run in a process imports and connects for the first time
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        with recording() as commands:
            run()
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        print(f"{name}: {time.perf_counter() - started:.2f} s wall, control process CPU {cpu:.2f} s")
        print("HOST         START    END   SECS  COMMAND")
        print("\n".join(timeline_lines(commands)) + "\n")
    return 0


def main(sizes: list[int], repeat: int = 3, lanes: tuple[int, ...] | None = None) -> int:
    import json
    import subprocess

    from gpufleet.table import render_table

    from operations.fact_prefetch import READ_LANES

    results = {}
    for n in sizes:
        for lane_count in lanes or (READ_LANES,):
            # One process per size: pyinfra's SSH client caches known_hosts per process, and the lab
            # gives re-created hosts new host keys.
            run = subprocess.run([sys.executable, "-m", "gpufleet.bench", "--one", str(n), str(repeat),
                                  str(lane_count), *(["--as-is"] if AS_IS else [])],
                                 stdout=subprocess.PIPE, text=True, check=True)
            results[n, lane_count] = json.loads(run.stdout.strip().splitlines()[-1])
    rows = []
    for (n, lane_count), r in results.items():
        a, b, c = r["floor"], r["converge"], r["drift"]
        rows.append([n, lane_count, f"{a:.2f}s", f"{b:.2f}s", f"{c:.2f}s", f"{b / a:.2f}", f"{c / b:.2f}",
                     " / ".join(f"{x:.0f}" for x in r["cmds"]),
                     " / ".join("n/a" if x is None else f"{x:.1f}s" for x in r["hosts_cpu"])])
    print(render_table(["NODES", "READ LANES", "(a) FLOOR", "(b) CONVERGE", "(c) DRIFT", "(b)/(a)", "(c)/(b)",
                        "CMDS/HOST a/b/c", "LAB HOSTS' CPU a/b/c"], rows))
    lo, hi = min(sizes), max(sizes)
    if hi != lo:
        for lane_count in lanes or (READ_LANES,):
            scale = [results[hi, lane_count][k] / results[lo, lane_count][k] for k in ("floor", "converge", "drift")]
            print(f"\nN={hi}/N={lo} ({lane_count} read lanes): floor {scale[0]:.2f}, converge {scale[1]:.2f}, "
                  f"drift {scale[2]:.2f}")
    print("targets: (b)/(a) <= 2, (c)/(b) <= 1.2, N=4/N=1 <= 1.3")
    return 0


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m gpufleet.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[1, 2, 4], help="lab GPU nodes to measure")
    parser.add_argument("--lanes", type=lambda v: tuple(int(x) for x in v.split(",")), default=None,
                        help="prefetch read lanes to compare, e.g. 1,4 (default: READ_LANES)")
    parser.add_argument("--as-is", action="store_true", help="measure the lab as deployed, without reshaping it")
    parser.add_argument("--timeline", action="store_true",
                        help="print one converge's and one drift's SSH commands with their times (the lab as is)")
    parser.add_argument("--one", nargs=3, type=int, metavar=("NODES", "REPEAT", "LANES"),
                        help=argparse.SUPPRESS)  # the child process of one measurement
    options = parser.parse_args()
    AS_IS = options.as_is
    if options.timeline:
        sys.exit(timeline())
    if options.one:
        import json

        print(json.dumps(one_size(*options.one)))
        sys.exit(0)
    sys.exit(main(options.sizes, lanes=options.lanes))
