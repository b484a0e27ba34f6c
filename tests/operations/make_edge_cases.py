# ruff: noqa: E501, E702, E731 - a data table of cases
"""Regenerate the operation cases of loadbalancer.* and monitoring.* (after a template change).

    .venv/bin/python tests/operations/make_edge_cases.py

Writes each case\x27s inputs (facts computed from the real renderers), runs the operation against
them with pyinfra-testing\x27s fake host and stores the commands it yields. Review the diff: the
cases pin the exact commands.
"""
import hashlib
import json
import sys
from pathlib import Path
from unittest.mock import patch
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pyinfra.context import ctx_host, ctx_state
from pyinfra_testing.util import FakeState, create_host, parse_value, coerce_operation_arguments
from pyinfra_testing.operations import parse_commands
from importlib import import_module

from operations import loadbalancer as lb, monitoring as mon

def run(case_dir: Path, case: dict):
    module_name, op_name = case_dir.name.rsplit(".", 1)
    op = getattr(import_module(f"operations.{module_name}"), op_name)
    state = FakeState()
    host = create_host(state, facts=case.get("facts", {}))
    args, kwargs = coerce_operation_arguments(op, parse_value(case.get("args", [])), parse_value(case.get("kwargs", {})))
    with patch("pyinfra.operations.files.get_timestamp", lambda: "a-timestamp"), ctx_state.use(state), ctx_host.use(host):
        try:
            cmds = parse_commands(list(op._inner(*args, **kwargs)))
            case["commands"] = cmds
            case.pop("exception", None)
            if not cmds:
                case["noop_description"] = host.noop_description
        except Exception as e:
            case["commands"] = []
            case["exception"] = {"name": type(e).__name__, "message": str(e)}
    return case

T = Path(__file__).resolve().parent
sha1 = lambda t: hashlib.sha1(t.encode()).hexdigest()
R2 = [{"name": "gpu-node-1-vllm-0", "address": "gpu-node-1", "port": 8000},
      {"name": "gpu-node-2-vllm-0", "address": "gpu-node-2", "port": 8000}]
R3 = R2 + [{"name": "gpu-node-3-vllm-0", "address": "gpu-node-3", "port": 8000}]
OPTS = {"listen_port": 80, "status_port": 8081}
NO_EDGE_FILES = {"files.File": {f"path={p}": None for p in (lb.TLS_CERT, lb.TLS_KEY, lb.API_KEY_MAP)}}  # TLS and API key off
def ng(replicas, drained=(), live=True, file=True):
    text, cid = lb.render(replicas, drained, OPTS)
    return {"edge.NginxState": {"status_port=8081": {"config_sha1": sha1(text) if file else None,
            "drained": sorted(drained), "live_config_id": cid if live else None}}, **NO_EDGE_FILES}
def write(folder, name, case):
    d = T / folder; d.mkdir(parents=True, exist_ok=True)
    case = run(d, case)
    (d / f"{name}.json").write_text(json.dumps(case, indent=2) + "\n")
    print(d / f"{name}.json", "->", len(case["commands"]), "commands", case.get("exception", {}).get("name", ""))

write("loadbalancer.nginx", "converged_keeps_drained_member_noop", {"kwargs": {"replicas": R2, "options": OPTS}, "facts": ng(R2, ["gpu-node-2-vllm-0"])})
write("loadbalancer.nginx", "new_replica_tests_swaps_and_reloads", {"kwargs": {"replicas": R3, "options": OPTS}, "facts": ng(R2)})
write("loadbalancer.nginx", "fresh_host_writes_config", {"kwargs": {"replicas": R2, "options": OPTS}, "facts": {"edge.NginxState": {"status_port=8081": {"config_sha1": None, "drained": [], "live_config_id": None}}, **NO_EDGE_FILES}})
stale_key = ng(R2, ["gpu-node-2-vllm-0"]); stale_key["files.File"] = {**stale_key["files.File"], f"path={lb.TLS_KEY}": {"user": "root", "group": "root", "mode": 600, "size": 1704}}
write("loadbalancer.nginx", "tls_turned_off_removes_the_key", {"kwargs": {"replicas": R2, "options": OPTS}, "facts": stale_key})
write("loadbalancer.nginx", "file_current_but_not_served_reloads", {"kwargs": {"replicas": R2, "options": OPTS}, "facts": ng(R2, live=False)})
write("loadbalancer.nginx", "no_replicas_refused", {"kwargs": {"replicas": [], "options": OPTS}, "facts": ng(R2)})
write("loadbalancer.drain", "drain_marks_member_down", {"kwargs": {"replica": "gpu-node-1-vllm-0", "replicas": R2, "options": OPTS, "reason": "vLLM v0.11.1"}, "facts": ng(R2)})
write("loadbalancer.drain", "already_drained_is_noop", {"kwargs": {"replica": "gpu-node-1-vllm-0", "replicas": R2, "options": OPTS}, "facts": ng(R2, ["gpu-node-1-vllm-0"])})
write("loadbalancer.drain", "last_live_member_refused", {"kwargs": {"replica": "gpu-node-2-vllm-0", "replicas": R2, "options": OPTS}, "facts": ng(R2, ["gpu-node-1-vllm-0"])})
write("loadbalancer.drain", "unknown_replica_refused", {"kwargs": {"replica": "gpu-node-9-vllm-0", "replicas": R2, "options": OPTS}, "facts": ng(R2)})
write("loadbalancer.undrain", "undrain_restores_member", {"kwargs": {"replica": "gpu-node-1-vllm-0", "replicas": R2, "options": OPTS}, "facts": ng(R2, ["gpu-node-1-vllm-0"])})
write("loadbalancer.undrain", "not_drained_is_noop", {"kwargs": {"replica": "gpu-node-1-vllm-0", "replicas": R2, "options": OPTS}, "facts": ng(R2)})

# --- monitoring.dcgm_exporter
CSV = "DCGM_FI_DEV_GPU_TEMP, gauge, GPU temperature (in C).\n"
IMG = "nvcr.io/nvidia/k8s/dcgm-exporter:4.5.3-4.8.2-distroless"
spec = mon.dcgm_spec(IMG, 9400, CSV)
csv_facts = lambda present: {"files.File": {f"path={mon.DCGM_COUNTERS}": ({"mode": 644, "user": "root", "group": "root"} if present else None)},
    "files.Sha1File": {f"path={mon.DCGM_COUNTERS}": sha1(CSV) if present else None},
    "files.Directory": {"path=/etc/gpufleet/dcgm-exporter": {"mode": 755} if present else None, f"path={mon.DCGM_COUNTERS}": None}}
cs = lambda exists, running=True, digest=None: {"docker.ContainerState": {"container=dcgm-exporter": {"exists": exists, "running": running, "status": "running" if running else "exited", "restarting": False, "spec": digest or spec.digest(), "image_id": "sha256:1", "image": IMG, "restart_count": 0} if exists else {"exists": False, "running": False, "status": None, "restarting": False, "spec": None, "image_id": None, "image": None, "restart_count": 0}}}
write("monitoring.dcgm_exporter", "no_gpus_not_started", {"kwargs": {"image": IMG, "gpu_count": 0, "counters": CSV}, "facts": {}})
write("monitoring.dcgm_exporter", "fresh_node_runs_exporter", {"kwargs": {"image": IMG, "gpu_count": 2, "counters": CSV}, "facts": {**csv_facts(False), **cs(False)}})
write("monitoring.dcgm_exporter", "converged_is_noop", {"kwargs": {"image": IMG, "gpu_count": 2, "counters": CSV}, "facts": {**csv_facts(True), **cs(True)}})
write("monitoring.dcgm_exporter", "new_image_recreates", {"kwargs": {"image": IMG.replace("4.5.3-4.8.2", "4.6.0-4.8.3"), "gpu_count": 2, "counters": CSV}, "facts": {**csv_facts(True), **cs(True)}})

# --- monitoring.gpu_monitor
REQ = ["nvidia-ml-py==13.615.71", "prometheus-client==0.23.1"]
PIP = ["--no-index", "--find-links", "http://lab-repo/wheels/", "--trusted-host", "lab-repo"]
SCRIPT = "print('gpu monitor')\n"
digest = mon._digest(REQ, PIP)
unit = mon.monitor_unit(9401, "0.0.0.0", 5.0)
def gm(installed=True, venv=True, script=True, unit_ok=True, active="active", enabled="enabled", gpu_containers=(), cdi=False):
    f = {"apt.PackageStates": {"packages=['python3-venv']": {"python3-venv": {"version": "3.11.2-1+b1", "held": False}} if installed else {}},
         "files.FileContents": {f"path={mon.MONITOR_STAMP}": [digest] if venv else None},
         "files.File": {f"path={mon.MONITOR_DIR}/gpu_monitor.py": {"mode": 755, "user": "root", "group": "root"} if script else None,
                        f"path={mon.MONITOR_UNIT}": {"mode": 644, "user": "root", "group": "root"} if unit_ok else None},
         "files.Sha1File": {f"path={mon.MONITOR_DIR}/gpu_monitor.py": sha1(SCRIPT) if script else None,
                            f"path={mon.MONITOR_UNIT}": (sha1(unit) if unit_ok else "0000")},
         "files.Directory": {f"path={mon.MONITOR_DIR}": {"mode": 755} if script else None, "path=/etc/systemd/system": {"mode": 755}, f"path={mon.MONITOR_DIR}/gpu_monitor.py": None, f"path={mon.MONITOR_UNIT}": None},
         "edge.ServiceState": {f"service={mon.MONITOR_SERVICE}": {"active": active, "enabled": enabled}},
         "docker.GpuContainers": {"status": "ok", "containers": list(gpu_containers)},
         "docker.DockerDaemonConfig": {"status": "ok", "config": {"features": {"cdi": True}} if cdi else {}, "error": None}}
    if not unit_ok and unit_ok is not None:
        f["files.File"][f"path={mon.MONITOR_UNIT}"] = {"mode": 644, "user": "root", "group": "root"}
    return f
K = {"gpu_count": 2, "requirements": REQ, "pip_install_args": PIP, "script": SCRIPT}
write("monitoring.gpu_monitor", "no_gpus_not_installed", {"kwargs": {**K, "gpu_count": 0}, "facts": {}})
fresh = gm(installed=False, venv=False, script=False, unit_ok=False, active="inactive", enabled="not-found")
fresh["files.File"][f"path={mon.MONITOR_UNIT}"] = None; fresh["files.Sha1File"][f"path={mon.MONITOR_UNIT}"] = None
write("monitoring.gpu_monitor", "fresh_node_installs_enables_starts", {"kwargs": K, "facts": fresh})
write("monitoring.gpu_monitor", "converged_is_noop", {"kwargs": K, "facts": gm()})
write("monitoring.gpu_monitor", "stopped_service_started_not_rebuilt", {"kwargs": K, "facts": gm(active="failed")})
write("monitoring.gpu_monitor", "new_pins_rebuild_venv_and_restart", {"kwargs": {**K, "requirements": ["nvidia-ml-py==13.615.71", "prometheus-client==0.24.0"]}, "facts": gm()})
write("monitoring.gpu_monitor", "unit_change_refused_under_gpu_containers", {"kwargs": {**K, "port": 9402}, "facts": gm(gpu_containers=["vllm-gpu-node-1-vllm-0"])})
write("monitoring.gpu_monitor", "unit_change_refused_even_with_a_cdi_flag_in_daemon_json", {"kwargs": {**K, "port": 9402}, "facts": gm(gpu_containers=["vllm-gpu-node-1-vllm-0"], cdi=True)})

# --- monitoring.prometheus
NODES = [{"name": "gpu-node-1", "address": "gpu-node-1", "dcgm_exporter_port": 9400, "gpu_monitor_port": 9401, "milvus_metrics_port": 9091}]
RP = [{"name": "gpu-node-1-vllm-0", "node": "gpu-node-1", "address": "gpu-node-1", "port": 8000}]
NODES2 = NODES + [{**NODES[0], "name": "gpu-node-2", "address": "gpu-node-2"}]
RP2 = RP + [{"name": "gpu-node-2-vllm-0", "node": "gpu-node-2", "address": "gpu-node-2", "port": 8000}]
popts = {"port": 9090, "scrape_interval_s": 15, "retention": "15d"}
defaults = mon.prometheus_defaults(9090, "15d")
RULES = "groups:\n  - name: test\n    rules:\n      - alert: Down\n        expr: up == 0\n"
def pf(text, ok=True, defaults_ok=True, rules=RULES):
    return {"files.File": {f"path={mon.PROMETHEUS_DEFAULTS}": {"mode": 644, "user": "root", "group": "root"}},
            "files.Sha1File": {f"path={mon.PROMETHEUS_DEFAULTS}": sha1(defaults) if defaults_ok else "0000",
                               f"path={mon.PROMETHEUS_RULES}": sha1(rules) if rules is not None else None},
            "files.Directory": {"path=/etc/default": {"mode": 755}},
            "edge.PrometheusState": {"address=127.0.0.1, port=9090": {"config_sha1": sha1(text) if text is not None else None, "reload_ok": ok}}}
one = mon.render_prometheus(RP, NODES, popts)
PK = {"replicas": RP, "nodes": NODES, "options": popts, "rules": RULES}
write("monitoring.prometheus", "converged_is_noop", {"kwargs": PK, "facts": pf(one)})
write("monitoring.prometheus", "new_node_checks_swaps_and_reloads", {"kwargs": {**PK, "replicas": RP2, "nodes": NODES2}, "facts": pf(one)})
write("monitoring.prometheus", "new_listen_args_restart", {"kwargs": PK, "facts": pf(one, defaults_ok=False)})
write("monitoring.prometheus", "new_rules_checked_swapped_and_reloaded", {"kwargs": PK, "facts": pf(one, rules="groups: []\n")})
write("monitoring.prometheus", "fresh_host_uploads_rules_and_config", {"kwargs": PK, "facts": pf(None, ok=None, rules=None)})
write("monitoring.prometheus", "failed_reload_reloads_again", {"kwargs": PK, "facts": pf(one, ok=False)})

# --- monitoring.alertmanager (the webhook URL is a control-side secret file)
URL_FILE = "tests/fixtures/prometheus/webhook-url"
URL = (T.parent / "fixtures/prometheus/webhook-url").read_text().strip()
AM = mon.render_alertmanager(URL)
AMD = mon.alertmanager_defaults(mon.ALERTMANAGER_LISTEN)
def am(installed=True, conf=AM, defaults_ok=True, active="active", enabled="enabled", leftover=False, conf_mode=640):
    sha256 = lambda t: hashlib.sha256(t.encode()).hexdigest()
    return {"apt.PackageStates": {"packages=['prometheus-alertmanager']": {"prometheus-alertmanager": {"version": "0.25.0-1+b4", "held": False}} if installed else {}},
            "files.File": {f"path={mon.ALERTMANAGER_DEFAULTS}": {"mode": 644, "user": "root", "group": "root"},
                           f"path={mon.ALERTMANAGER_CONF}": {"mode": conf_mode, "user": "root", "group": "prometheus"} if conf is not None else None,
                           f"path={mon.ALERTMANAGER_OLD}": {"mode": 640, "user": "root", "group": "prometheus"} if leftover else None},
            "files.Sha1File": {f"path={mon.ALERTMANAGER_DEFAULTS}": sha1(AMD) if defaults_ok else "0000"},
            "files.Sha256File": {f"path={mon.ALERTMANAGER_CONF}": sha256(conf) if conf is not None else None},
            "files.Directory": {"path=/etc/default": {"mode": 755}},
            "edge.ServiceState": {f"service={mon.ALERTMANAGER_SERVICE}": {"active": active, "enabled": enabled}}}
write("monitoring.alertmanager", "no_webhook_no_alertmanager", {"kwargs": {"webhook_url_file": None}, "facts": {}})
write("monitoring.alertmanager", "converged_is_noop", {"kwargs": {"webhook_url_file": URL_FILE}, "facts": am()})
write("monitoring.alertmanager", "fresh_lb_installs_configures_and_starts", {"kwargs": {"webhook_url_file": URL_FILE}, "facts": am(installed=False, conf=None, defaults_ok=False, active="inactive", enabled="disabled")})
write("monitoring.alertmanager", "rotated_url_rewrites_config_and_reloads", {"kwargs": {"webhook_url_file": URL_FILE}, "facts": am(conf=mon.render_alertmanager("https://old.example.internal/hook"))})
write("monitoring.alertmanager", "not_a_url_refused_without_showing_it", {"kwargs": {"webhook_url_file": "tests/fixtures/prometheus/webhook-url-not-a-url"}, "facts": {}})
write("monitoring.alertmanager", "port_not_a_number_refused_naming_the_key", {"kwargs": {"webhook_url_file": "tests/fixtures/prometheus/webhook-url-bad-port"}, "facts": {}})
write("monitoring.alertmanager", "copy_left_by_a_cut_off_run_reloads_and_waits", {"kwargs": {"webhook_url_file": URL_FILE}, "facts": am(leftover=True)})
write("monitoring.alertmanager", "mode_fixed_in_place_then_reloaded", {"kwargs": {"webhook_url_file": URL_FILE}, "facts": am(conf_mode=644)})
