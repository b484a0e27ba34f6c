"""GPU monitoring: the DCGM exporter and gpu_monitor on GPU nodes, Prometheus on lb hosts.

- DCGM exporter (:9400): a container (operations/containers.py) with ``--gpus all`` and
  ``--cap-add SYS_ADMIN``, its counters CSV (files/dcgm/counters.csv, ``DCGM_FI_DEV_*`` only:
  GeForce has no profiling fields) mounted over the image's default-counters.csv. The CSV's
  digest is a label, so a changed CSV recreates the container. Never started without GPUs.
- gpu_monitor (:9401): files/gpu_monitor.py under /opt/gpufleet/gpu-monitor/, in a venv made with
  python3-venv from pinned requirements and ``monitor_pip_install_args`` (a mirror, or a wheel
  directory in air-gapped sites and the lab); a systemd unit from files/systemd/. A venv is
  (re)built only when its inputs change (a stamp file records them); the service restarts only
  when the script, the venv or the unit changed. A unit change needs ``systemctl daemon-reload``,
  which is refused while GPU containers run without CDI; enabling uses ``--no-reload``.
- Prometheus (Debian's ``prometheus``) on lb hosts: scrape jobs generated from the inventory (vLLM
  per replica, DCGM exporter, gpu_monitor and Milvus per GPU node). The new config is checked
  with ``promtool check config`` before it replaces the live one; after the reload the operation
  waits for ``prometheus_config_last_reload_successful 1`` with a fresh timestamp, and puts the
  old file back (and reloads) if that does not come.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from io import StringIO
from pathlib import Path
from typing import Any

import jinja2
from pyinfra import host
from pyinfra.api import FileUploadCommand, OperationError, StringCommand, operation
from pyinfra.facts.files import FileContents

from operations import apt, containers
from operations.util import put_text
from operations.docker import refuse_daemon_reload_under_gpu_containers
from operations.facts.edge import PROMETHEUS_CONF, PrometheusState, ServiceState

FILES = Path(__file__).resolve().parents[1] / "files"
DCGM_COUNTERS = "/etc/gpufleet/dcgm-exporter/counters.csv"
DCGM_CONTAINER = "dcgm-exporter"
MONITOR_DIR = "/opt/gpufleet/gpu-monitor"
MONITOR_VENV = f"{MONITOR_DIR}/venv"
MONITOR_STAMP = f"{MONITOR_VENV}/.gpufleet-inputs"
MONITOR_SERVICE = "gpufleet-gpu-monitor.service"
MONITOR_UNIT = f"/etc/systemd/system/{MONITOR_SERVICE}"
PROMETHEUS_DEFAULTS = "/etc/default/prometheus"
PROM_NEW = f"{PROMETHEUS_CONF}.gpufleet-new"
PROM_OLD = f"{PROMETHEUS_CONF}.gpufleet-old"


def _render(template: str, **values) -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string((FILES / template).read_text()).render(**values)


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


# --- DCGM exporter -------------------------------------------------------------------------------

def dcgm_counters() -> str:
    return (FILES / "dcgm" / "counters.csv").read_text()


def dcgm_spec(image: str, port: int = 9400, counters: str = "", listen_address: str = "0.0.0.0"):
    return containers.ContainerSpec(
        name=DCGM_CONTAINER, image=image, gpus="all", extra_args=["--cap-add", "SYS_ADMIN"],
        ports=[f"{listen_address}:{port}:9400"],
        volumes=[f"{DCGM_COUNTERS}:/etc/dcgm-exporter/default-counters.csv:ro"],
        labels={"io.gpufleet.counters": hashlib.sha256(counters.encode()).hexdigest()[:16]},
    )


@operation()
def dcgm_exporter(image: str, gpu_count: int, port: int = 9400, counters: str | None = None,
                  listen_address: str = "0.0.0.0"):
    """
    NVIDIA's DCGM exporter as a container on a GPU node; nothing on a host without GPUs.

    + image: pinned exporter image, e.g. ``nvcr.io/nvidia/k8s/dcgm-exporter:4.5.3-4.8.2-distroless``
    + gpu_count: the host's GPUs (settings.gpu_count); 0 means no exporter
    + port: host port for /metrics and /health (the container listens on 9400)
    + counters: the counters CSV text (default: files/dcgm/counters.csv)
    + listen_address: host address the port is published on

    **Example:**

    .. code:: python

        monitoring.dcgm_exporter(image=settings.dcgm_exporter_image, gpu_count=settings.gpu_count)
    """
    if not gpu_count:
        host.noop("no GPUs on this host: no DCGM exporter")
        return
    counters = dcgm_counters() if counters is None else counters
    yield from put_text(DCGM_COUNTERS, counters)
    yield from containers.container._inner(spec=dcgm_spec(image, port, counters, listen_address))


# --- gpu_monitor ---------------------------------------------------------------------------------

def gpu_monitor_script() -> str:
    return (FILES / "gpu_monitor.py").read_text()


def monitor_unit(port: int, listen_address: str, interval_s: float) -> str:
    return _render("systemd/gpufleet-gpu-monitor.service.j2", port=port, listen_address=listen_address,
                   interval_s=interval_s, python=f"{MONITOR_VENV}/bin/python", script=f"{MONITOR_DIR}/gpu_monitor.py")


def venv_command(requirements: list[str], pip_install_args: list[str], digest: str) -> str:
    pip = " ".join(shlex.quote(a) for a in [*pip_install_args, *requirements])
    return (f"rm -rf {MONITOR_VENV} && python3 -m venv {MONITOR_VENV} && "
            f"{MONITOR_VENV}/bin/pip install --disable-pip-version-check --no-input -q {pip} && "
            f"echo {digest} > {MONITOR_STAMP}")


@operation()
def gpu_monitor(gpu_count: int, requirements: list[str], pip_install_args: list[str] | None = None,
                port: int = 9401, listen_address: str = "0.0.0.0", interval_s: float = 5.0,
                script: str | None = None):
    """
    files/gpu_monitor.py as a systemd service (NVML metrics on ``port``); nothing without GPUs.

    + gpu_count: the host's GPUs; 0 means no monitor
    + requirements: exact pins for its venv, e.g. ``["nvidia-ml-py==13.615.71", "prometheus-client==0.23.1"]``
    + pip_install_args: extra ``pip install`` arguments (``--index-url``, ``--find-links``, ``--no-index``)
    + port, listen_address, interval_s: passed to gpu_monitor.py
    + script: the monitor's source (default: files/gpu_monitor.py)

    **Example:**

    .. code:: python

        monitoring.gpu_monitor(gpu_count=2, requirements=settings.gpu_monitor_requirements,
                               pip_install_args=["--index-url", "https://pypi.example.internal/simple"])
    """
    if not gpu_count:
        host.noop("no GPUs on this host: no gpu_monitor")
        return
    script = gpu_monitor_script() if script is None else script
    yield from apt.packages._inner(packages=["python3-venv"])

    commands = list(put_text(f"{MONITOR_DIR}/gpu_monitor.py", script, mode="755"))
    changed = bool(commands)
    yield from commands

    digest = _digest(requirements, pip_install_args or [])
    stamp = host.get_fact(FileContents, path=MONITOR_STAMP)
    if not stamp or stamp[0].strip() != digest:
        changed = True
        yield venv_command(requirements, pip_install_args or [], digest)

    unit = list(put_text(MONITOR_UNIT, monitor_unit(port, listen_address, interval_s)))
    if unit:
        refuse_daemon_reload_under_gpu_containers(f"writing {MONITOR_UNIT}")
        changed = True
        yield from unit
        yield "systemctl daemon-reload"

    service = host.get_fact(ServiceState, service=MONITOR_SERVICE)
    if service["enabled"] != "enabled":
        # `systemctl enable` reloads systemd unless told not to; the unit is known already.
        yield f"systemctl enable --no-reload {MONITOR_SERVICE}"
    if changed:
        yield f"systemctl restart {MONITOR_SERVICE}"
    elif service["active"] != "active":
        yield f"systemctl start {MONITOR_SERVICE}"
    elif service["enabled"] == "enabled":
        host.noop(f"{MONITOR_SERVICE} runs, venv {digest}")


# --- Prometheus on lb hosts ----------------------------------------------------------------------

NODE_JOBS = [
    {"name": "dcgm", "key": "dcgm_exporter_port", "path": "/metrics",
     "comment": "DCGM exporter per GPU node (DCGM_FI_DEV_* fields)."},
    {"name": "gpu_monitor", "key": "gpu_monitor_port", "path": "/metrics",
     "comment": "gpufleet's NVML monitor per GPU node (gpufleet_gpu_*, gpufleet_nvml_up)."},
    {"name": "milvus", "key": "milvus_metrics_port", "path": "/metrics",
     "comment": "Milvus standalone per GPU node (its /metrics is on milvus_health_port)."},
]


def prometheus_args(fleet, host_name: str) -> dict[str, Any]:
    """``replicas``, ``nodes`` and ``options`` for ``prometheus`` on one lb host of a gpufleet Fleet."""
    s = fleet.hosts[host_name].settings
    nodes = [{"name": n.name, "address": n.address, "dcgm_exporter_port": n.settings.dcgm_exporter_port,
              "gpu_monitor_port": n.settings.gpu_monitor_port, "milvus_metrics_port": n.settings.milvus_health_port}
             for n in fleet.nodes]
    replicas = [{"name": r.name, "node": r.node, "address": r.address, "port": r.port} for r in fleet.replicas]
    return {"replicas": replicas, "nodes": nodes,
            "options": {"port": s.prometheus_port, "scrape_interval_s": s.prometheus_scrape_interval_s,
                        "retention": s.prometheus_retention}}


def render_prometheus(replicas: list, nodes: list, options: dict | None = None) -> str:
    opts = {"port": 9090, "scrape_interval_s": 15, **(options or {})}
    rows = [r if isinstance(r, dict) else r.model_dump() for r in replicas]
    return _render("prometheus/prometheus.yml.j2", replicas=rows, nodes=nodes, node_jobs=NODE_JOBS,
                   prometheus_port=opts["port"], scrape_interval_s=opts["scrape_interval_s"])


def prometheus_defaults(port: int, retention: str) -> str:
    return ("# Managed by gpufleet (operations/monitoring.py): arguments of Debian's prometheus unit.\n"
            f'ARGS="--web.listen-address=:{int(port)} --storage.tsdb.retention.time={retention}"\n')


def prometheus_script(port: int, restart: bool, test_new: bool = True) -> str:
    """Shell text: promtool-check the new file, swap it in, reload, wait for a successful load; roll back."""
    verb = "restart" if restart else "reload-or-restart"
    metrics = f"http://127.0.0.1:{int(port)}/metrics"
    steps = ["set -u"]
    if test_new:
        steps += [
            f'if ! out=$(promtool check config {PROM_NEW} 2>&1); then rm -f {PROM_NEW}; '
            f'echo "gpufleet: promtool rejects the new config, {PROMETHEUS_CONF} unchanged: $out" >&2; exit 1; fi',
            f"if [ -e {PROMETHEUS_CONF} ]; then cp -p {PROMETHEUS_CONF} {PROM_OLD}; fi",
            f"mv -f {PROM_NEW} {PROMETHEUS_CONF}",
        ]
    steps += [
        "since=$(date +%s); ok=0",
        f"if systemctl {verb} prometheus; then for i in $(seq 1 240); do "
        f"m=$(curl -fsS -m 2 {metrics} 2>/dev/null || true); "
        "r=$(echo \"$m\" | awk '/^prometheus_config_last_reload_successful /{print $2}'); "
        "t=$(echo \"$m\" | awk '/^prometheus_config_last_reload_success_timestamp_seconds /{printf \"%d\", $2}'); "
        'if [ "$r" = 1 ] && [ "${t:-0}" -ge "$since" ]; then ok=1; break; fi; sleep 0.5; done; fi',
        f'if [ "$ok" = 1 ]; then rm -f {PROM_OLD}; exit 0; fi',
        'echo "gpufleet: prometheus did not load the new config; rolling back" >&2',
        f"if [ -e {PROM_OLD} ]; then mv -f {PROM_OLD} {PROMETHEUS_CONF}; systemctl {verb} prometheus || true; fi",
        "exit 1",
    ]
    return "\n".join(steps)


@operation()
def prometheus(replicas: list, nodes: list, options: dict | None = None):
    """
    /etc/prometheus/prometheus.yml from the inventory: check, swap in, reload, roll back on failure.

    + replicas: ``[{"name", "node", "address", "port"}]`` (one vLLM target each)
    + nodes: ``[{"name", "address", "dcgm_exporter_port", "gpu_monitor_port", "milvus_metrics_port"}]``
    + options: ``port`` (9090), ``scrape_interval_s`` (15), ``retention`` (15d)

    **Example:**

    .. code:: python

        monitoring.prometheus(**monitoring.prometheus_args(fleet, host.name))
    """
    opts = {"port": 9090, "scrape_interval_s": 15, "retention": "15d", **(options or {})}
    defaults = list(put_text(PROMETHEUS_DEFAULTS, prometheus_defaults(opts["port"], opts["retention"])))
    yield from defaults
    text = render_prometheus(replicas, nodes, opts)
    state = host.get_fact(PrometheusState, port=opts["port"])
    if state["config_sha1"] != hashlib.sha1(text.encode()).hexdigest():
        yield FileUploadCommand(StringIO(text), PROM_NEW)
        yield StringCommand(prometheus_script(opts["port"], restart=bool(defaults)))
    elif defaults or state["reload_ok"] is not True:
        yield StringCommand(prometheus_script(opts["port"], restart=bool(defaults), test_new=False))
    elif not defaults:
        host.noop(f"prometheus runs its config ({len(replicas)} vLLM targets, {len(nodes)} GPU nodes)")


def target_problems(targets: list[dict], expected: list[str] | None = None) -> list[str]:
    """Problems in parsed /api/v1/targets (operations.facts.edge.parse_targets): not up, or missing."""
    problems = [f"{t['job']} {t['instance']}: {t['health']}" + (f" ({t['error']})" if t["error"] else "")
                for t in targets if t["health"] != "up"]
    seen = {t["instance"] for t in targets}
    problems += [f"{inst}: not a Prometheus target" for inst in (expected or []) if inst not in seen]
    return problems


def expected_targets(args: dict[str, Any]) -> list[str]:
    """``address:port`` of every target ``prometheus_args`` declares (the self-scrape excluded)."""
    out = [f"{r['address']}:{r['port']}" for r in args["replicas"]]
    for n in args["nodes"]:
        out += [f"{n['address']}:{n[job['key']]}" for job in NODE_JOBS]
    return out


def check_targets(host_, port: int = 9090, expected: list[str] | None = None) -> tuple[bool, list[str]]:
    """On an lb host (a connected pyinfra Host, see gpufleet.remote): are all Prometheus targets up?

    Returns ``(ok, problems)``. Use as ``remote.run_parallel(state, lbs, lambda h: check_targets(h, 9090,
    expected_targets(prometheus_args(fleet, h.name))))``.
    """
    from gpufleet.remote import shell
    from operations.facts.edge import parse_targets

    ok, text = shell(host_, f"curl -fsS -m 10 http://127.0.0.1:{int(port)}/api/v1/targets")
    if not ok:
        return False, [f"Prometheus API on 127.0.0.1:{port} does not answer: {text.strip()[:200]}"]
    try:
        targets = parse_targets(text)
    except ValueError as exc:
        raise OperationError(f"unexpected /api/v1/targets answer: {exc}") from exc
    problems = target_problems(targets, expected)
    return not problems, problems
