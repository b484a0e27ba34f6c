"""`make bench-scale`: fleet scale by simulation, and where the control host's time goes.

N light stand-in hosts (``sim-1..N``: the lab's base host image, sshd, apt and systemd; no Docker,
no vLLM) join the running lab's network. For 1 host and for N, on hosts already converged, this
measures the pyinfra CLI as an operator runs it:

  (a) floor     ``pyinfra INV fact server.Hostname``: connect and read one fact
  (b) converge  ``pyinfra -y INV lab/bench/base_role.py``: deploy.py's every-host block, nothing to do
  (c) check     ``pyinfra --dry INV lab/bench/base_role.py``: the plan alone, which is drift's read
                 of these hosts (drift's runtime checks are for GPU nodes, load balancers and Milvus)

and prints wall time, the control process's CPU time (user + system, from the kernel), commands
per host (counted at pyinfra's SSH connector) and the N/1 ratios. Goal (issue 14): N = 32 at most
2x the wall time of 1. ``--profile`` runs one N-host converge under cProfile and prints its self
time grouped by where it goes: gevent's hub waiting on sockets (idle: the hosts are answering),
paramiko (SSH transport and its crypto), pyinfra (inventory, planning, operations), gpufleet's own
code, and the rest.

Each number is the median of ``--repeat`` runs, and ratios come from the same invocation:
these machines are noisy. The hosts are removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gpufleet import PROJECT_ROOT
from gpufleet.lab.topology import STATE_DIR, LabHost

SIM_DIR = STATE_DIR / "sim"
SIM_SSH_PORT_BASE = 2400  # sim-N -> 2400+N
DEPLOY = "lab/bench/base_role.py"
CONFIG = "lab/bench/config.py"  # no fleet gate: these hosts are in no role group on purpose


def sim_hosts(n: int) -> list[LabHost]:
    return [LabHost(f"sim-{i}", "sim", SIM_SSH_PORT_BASE + i) for i in range(1, n + 1)]


INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
INOTIFY_NEEDED = 1024  # each host's systemd holds several; every container's root shares the kernel's count


def ensure_inotify_instances() -> None:
    """Many systemd containers exhaust root's inotify instances (128 by default): systemd then logs
    "Failed to create inotify object: Too many open files" and never finishes booting. Raise the
    limit on this lab machine (as root), saying so; otherwise stop with the command to run."""
    have = int(INOTIFY_INSTANCES.read_text())
    if have >= INOTIFY_NEEDED:
        return
    try:
        INOTIFY_INSTANCES.write_text(str(INOTIFY_NEEDED))
    except OSError as exc:
        raise SystemExit(f"fs.inotify.max_user_instances is {have}: too few for the simulated hosts' systemd; "
                         f"run `sysctl -w fs.inotify.max_user_instances={INOTIFY_NEEDED}` as root ({exc.strerror})")
    print(f"bench-scale: fs.inotify.max_user_instances {have} -> {INOTIFY_NEEDED} on this machine (every "
          "simulated host's systemd needs several; they share root's count)", flush=True)


def start(n: int) -> None:
    """Start (or adopt) ``sim-1..n`` on the lab's network; write their inventory and known_hosts."""
    from gpufleet.lab import aptrepo, hosts, images
    from gpufleet.lab.control import _ensure_ssh_key, docker_client
    from gpufleet.lab.topology import SSH_KEY

    ensure_inotify_instances()
    client = docker_client()
    base, key, digest = images.base_image(client), _ensure_ssh_key(), aptrepo.inputs_digest()
    wanted = sim_hosts(n)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda h: hosts.ensure_host(client, h, base, key, digest), wanted))
        # 32 systemd boots share this machine's cores: minutes, not the lab's 120 s per host.
        keys = list(pool.map(lambda h: hosts.wait_until_booted(client.containers.get(h.name), timeout=600), wanted))
    SIM_DIR.mkdir(parents=True, exist_ok=True)
    (SIM_DIR / "known_hosts").write_text("".join(f"[127.0.0.1]:{h.ssh_port} {k}\n" for h, k in zip(wanted, keys)))
    for size in sorted({1, n}):
        # The file's stem is pyinfra's group for every host in it: "lab", so group_data/lab.py applies.
        directory = SIM_DIR / str(size)
        directory.mkdir(exist_ok=True)
        entries = [(h.name, {"ssh_hostname": "127.0.0.1", "ssh_port": h.ssh_port, "ssh_user": "root",
                             "ssh_key": str(SSH_KEY), "ssh_known_hosts_file": str(SIM_DIR / "known_hosts"),
                             "ssh_allow_agent": False, "ssh_look_for_keys": False}) for h in wanted[:size]]
        (directory / "lab.py").write_text(f"light = {entries!r}\n")


def remove(n: int) -> None:
    from gpufleet.lab import hosts
    from gpufleet.lab.control import docker_client

    client = docker_client()
    for h in sim_hosts(n):
        try:
            client.containers.get(h.name).remove(force=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
        hosts.remove_volume(client, hosts.volume_name(h))


def pyinfra_args(step: str, inventory: str) -> list[str]:
    common = ["--config", CONFIG, inventory]
    return {"floor": [*common, "fact", "server.Hostname"],
            "converge": ["-y", *common, DEPLOY],
            "check": ["--dry", *common, DEPLOY]}[step]


def container_cpu_seconds(ids: list[str]) -> float | None:
    """CPU seconds the containers have used so far (cgroup v1 cpuacct or v2 cpu.stat); None if unreadable."""
    total = 0.0
    for cid in ids:
        v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage")
        v2 = [Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat"), Path(f"/sys/fs/cgroup/docker/{cid}/cpu.stat")]
        if v1.exists():
            total += int(v1.read_text()) / 1e9
            continue
        stat = next((p for p in v2 if p.exists()), None)
        if stat is None:
            return None
        usage = dict(line.split() for line in stat.read_text().splitlines())
        total += int(usage["usage_usec"]) / 1e6
    return total


def sim_container_ids(n: int) -> list[str]:
    from gpufleet.lab.control import docker_client

    client = docker_client()
    return [client.containers.get(h.name).id for h in sim_hosts(n)]


def run_measured(args: list[str], profile: str | None = None, hosts: tuple[str, ...] = ()) -> dict:
    """One pyinfra CLI run in a child process: wall seconds, its CPU seconds, commands per host, and
    the CPU seconds the simulated ``hosts`` (container ids) spent meanwhile (they share this machine)."""
    counts_file = SIM_DIR / f"counts-{os.getpid()}.json"
    command = [sys.executable, "-m", "gpufleet.bench_scale", "--pyinfra", str(counts_file),
               *(["--profile-to", profile] if profile else []), "--", *args]
    hosts_before = container_cpu_seconds(list(hosts))
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "PYINFRA_PROGRESS": "off"})
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    hosts_after = container_cpu_seconds(list(hosts))
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"pyinfra {' '.join(args)} failed:\n{output[-3000:]}")
    counts = json.loads(counts_file.read_text())
    counts_file.unlink()
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
            "cmds": statistics.median(counts.values()) if counts else 0,
            "hosts_cpu": None if hosts_before is None or hosts_after is None else hosts_after - hosts_before}


def measure(size: int, repeat: int) -> dict:
    inventory = str(SIM_DIR / str(size) / "lab.py")
    ids = sim_container_ids(size)
    run_measured(pyinfra_args("converge", inventory))  # converged before anything is measured
    out = {}
    for step in ("floor", "converge", "check"):
        runs = [run_measured(pyinfra_args(step, inventory), hosts=tuple(ids)) for _ in range(repeat)]
        out[step] = {k: statistics.median(r[k] for r in runs) for k in ("wall", "cpu", "cmds")}
        host_cpu = [r["hosts_cpu"] for r in runs if r["hosts_cpu"] is not None]
        out[step]["hosts_cpu"] = statistics.median(host_cpu) if host_cpu else None
    return out


# Where self time goes, by the file (or builtin) a function lives in; first match wins. pyinfra's
# per-operation argument handling is most of what it spends in inspect and typing.
GROUPS = (("waiting on sockets (gevent recv/send/connect)", ("_socketcommon.py", "'send' of '_socket", "connect_ex",
                                                               "'recv", "gevent/thread.py", "libev", "libuv")),
          ("gevent: greenlet switching and the hub", ("gevent",)),
          ("SSH: paramiko and its crypto", ("paramiko", "cryptography", "nacl", "bcrypt", "_hashlib", "_ssl")),
          ("pyinfra: inventory, operations, their arguments (inspect, typing)",
           ("pyinfra", "/inspect.py", "/typing.py")),
          ("gpufleet and operations/", (f"{PROJECT_ROOT}/gpufleet/", f"{PROJECT_ROOT}/operations/",
                                        f"{PROJECT_ROOT}/lab/bench/", f"{PROJECT_ROOT}/deploy.py")),
          ("Python: imports, compile, paths", ("<frozen", "builtins.compile", "builtins.exec", "posix.")),
          ("the rest", ("",)))


def profile_groups(path: str) -> list[tuple[str, float]]:
    import pstats

    stats = pstats.Stats(path)
    totals = dict.fromkeys((name for name, _ in GROUPS), 0.0)
    for (filename, _line, function), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():
        where = f"{filename} {function}"
        group = next(name for name, marks in GROUPS if any(m in where for m in marks))
        totals[group] += tottime
    return sorted(totals.items(), key=lambda kv: -kv[1])


def main(n: int, repeat: int, profile: bool, keep: bool) -> int:
    from gpufleet.table import render_table

    try:
        start(n)
        results = {size: measure(size, repeat) for size in sorted({1, n})}
        rows = []
        for size, r in results.items():
            a, b, c = (r[k]["wall"] for k in ("floor", "converge", "check"))
            rows.append([size, f"{a:.2f}s", f"{b:.2f}s", f"{c:.2f}s", f"{b / a:.2f}", f"{c / b:.2f}",
                         " / ".join(f"{r[k]['cpu']:.1f}s" for k in ("floor", "converge", "check")),
                         " / ".join(f"{r[k]['cmds']:.0f}" for k in ("floor", "converge", "check"))])
        print(render_table(["HOSTS", "(a) FLOOR", "(b) CONVERGE", "(c) CHECK", "(b)/(a)", "(c)/(b)",
                            "CONTROL CPU a/b/c", "CMDS/HOST a/b/c"], rows))
        if n > 1:
            ratio = {k: results[n][k]["wall"] / results[1][k]["wall"] for k in ("floor", "converge", "check")}
            print(f"\n{n} hosts / 1 host, wall: floor {ratio['floor']:.2f}, converge {ratio['converge']:.2f}, "
                  f"check {ratio['check']:.2f} (goal: <= 2)")
            for k in ("converge", "check"):
                cpu, wall, hosts_cpu = (results[n][k][x] for x in ("cpu", "wall", "hosts_cpu"))
                print(f"{n} hosts, {k}: the control process used {cpu:.1f} s of CPU in {wall:.1f} s "
                      f"({100 * cpu / wall:.0f}% of one core)"
                      + (f"; the simulated hosts {hosts_cpu:.1f} s, on the same {os.cpu_count()} cores"
                         if hosts_cpu is not None else ""))
        if profile:
            path = str(SIM_DIR / "converge.pstats")
            run_measured(pyinfra_args("converge", str(SIM_DIR / str(n) / "lab.py")), profile=path)
            print(f"\nThe profiled process's top functions by self time: `python -m pstats {path}`")
            groups = profile_groups(path)
            total = sum(t for _, t in groups)
            print(f"\nWhere one {n}-host converge's control-host time goes (cProfile self time, {total:.1f} s):")
            print(render_table(["WHERE", "SECONDS", "SHARE"], [[name, f"{t:.2f}", f"{100 * t / total:.0f}%"]
                                                              for name, t in groups]))
    finally:
        if not keep:
            remove(n)
    return 0


def run_pyinfra(counts_file: str, profile_to: str | None, args: list[str]) -> int:
    """The child: pyinfra's CLI in this process (gevent first, as its own entry point does), every
    SSH command counted per host; the counts written to ``counts_file``."""
    import pyinfra_cli  # noqa: F401 - gevent's monkey patching, before anything opens a socket
    from pyinfra_cli.main import main as pyinfra_main

    from gpufleet.ssh_counting import counting

    profiler = None
    if profile_to:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    code = 0
    sys.argv = ["pyinfra", *args]
    try:
        with counting() as counts:
            try:
                pyinfra_main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            finally:
                if profiler is not None:
                    profiler.disable()
                    profiler.dump_stats(profile_to)
    finally:
        # counting() fills the counts when its block ends: written inside it, they were always {}
        # (every "commands/host" of `make bench-scale` read 0 from c68b537 on).
        Path(counts_file).write_text(json.dumps(counts))
    return code


if __name__ == "__main__":
    if sys.argv[1:2] == ["--pyinfra"]:
        rest = sys.argv[3:]
        profile_to = None
        if rest[:1] == ["--profile-to"]:
            profile_to, rest = rest[1], rest[2:]
        sys.exit(run_pyinfra(sys.argv[2], profile_to, rest[1:] if rest[:1] == ["--"] else rest))
    parser = argparse.ArgumentParser(prog="python -m gpufleet.bench_scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("hosts", nargs="?", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="one N-host converge under cProfile, grouped")
    parser.add_argument("--keep", action="store_true", help="leave the sim hosts running")
    options = parser.parse_args()
    sys.exit(main(options.hosts, options.repeat, options.profile, options.keep))
