"""deploy.py's GPU-node order on a fresh host (issue 11): nothing that needs a loaded driver runs
before the reboot that loads it.

On a fresh host the driver package is installed while no nvidia module is loaded. The persistence
daemon, the Container Toolkit's hook (every ``docker run --gpus``), NVML (gpu_monitor, the DCGM
exporter) and the vLLM replicas then fail with "driver not loaded" — the real ones do, and so do
the lab's stand-ins (tests/unit/test_standins_fail_like_real.py) — so a deploy that reaches them
before ``reboot_if_driver_stale`` stops and never reboots. The check reads deploy.py's
operations in source order, and is shown to catch the order deploy.py had before (the reboot
after the persistence daemon and the DCGM exporter).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from gpufleet import PROJECT_ROOT

DEPLOY = PROJECT_ROOT / "deploy.py"
DRIVER = "nvidia.driver"
REBOOT = "nvidia.reboot_if_driver_stale"
# Operations that fail on a host whose driver is installed but not loaded, and why.
NEEDS_LOADED_DRIVER = {
    "systemd.service:nvidia-persistenced": "nvidia-persistenced exits: no NVIDIA driver",
    "systemd.service:docker+restarted": "dockerd with the nvidia runtime: the hook runs for every --gpus container",
    "monitoring.gpu_monitor": "NVML: NVML_ERROR_DRIVER_NOT_LOADED",
    "monitoring.dcgm_exporter": "docker run --gpus all: the hook refuses (driver not loaded)",
    "vllm.replica": "docker run --gpus: the hook refuses",
    "vllm.ready": "a replica that never started",
}


def operations_in_order(source: str) -> list[str]:
    """Calls of ``module.operation(...)`` in the GPU-node blocks of deploy.py, in source order;
    ``systemd.service`` carries its service (and ``+restarted``)."""
    tree = ast.parse(source)
    found: list[tuple[int, int, str]] = []
    for block in tree.body:
        if not (isinstance(block, ast.If) and "gpu_nodes" in ast.unparse(block.test)):
            continue
        for node in ast.walk(ast.Module(body=block.body, type_ignores=[])):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    isinstance(node.func.value, ast.Name):
                name = f"{node.func.value.id}.{node.func.attr}"
                if name == "systemd.service":
                    kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
                    name += ":" + kw.get("service", "?").strip("'\"") + ("+restarted" if "restarted" in kw else "")
                found.append((node.lineno, node.col_offset, name))
    return [name for _, _, name in sorted(found)]


def order_problems(source: str) -> list[str]:
    ops = operations_in_order(source)
    if DRIVER not in ops or REBOOT not in ops:
        return [f"deploy.py must run {DRIVER} and {REBOOT} on GPU nodes"]
    problems = []
    if ops.index(REBOOT) < ops.index(DRIVER):
        problems.append(f"{REBOOT} before {DRIVER}")
    reboot_at = ops.index(REBOOT)
    for i, name in enumerate(ops):
        if name in NEEDS_LOADED_DRIVER and i < reboot_at:
            problems.append(f"{name} before the reboot that loads the driver ({NEEDS_LOADED_DRIVER[name]})")
    return problems


def test_nothing_needs_a_loaded_driver_before_the_reboot_that_loads_it():
    ops = operations_in_order(DEPLOY.read_text())
    assert {DRIVER, REBOOT, "systemd.service:nvidia-persistenced", "monitoring.dcgm_exporter", "vllm.replica"} <= set(ops)
    assert order_problems(DEPLOY.read_text()) == []
    # The reboot follows the driver directly: only the serving gate's check sits between them.
    assert ops[ops.index(DRIVER) + 1] == "gate.check" and ops[ops.index(DRIVER) + 2] == REBOOT


def test_the_check_catches_the_old_order():
    """The order deploy.py had before: the reboot after persistenced and the DCGM exporter."""
    source = DEPLOY.read_text()
    lines = source.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if "reboot = nvidia.reboot_if_driver_stale(" in line)
    end = next(i for i in range(start, len(lines)) if lines[i].strip().startswith("gate.check(reboot"))
    block = lines[start:end + 1]
    rest = lines[:start] + lines[end + 1:]
    after = next(i for i, line in enumerate(rest) if "monitoring.dcgm_exporter(" in line)
    after = next(i for i in range(after, len(rest)) if rest[i].rstrip().endswith(")")) + 1
    old = "".join(rest[:after] + block + rest[after:])
    problems = order_problems(old)
    assert any(p.startswith("systemd.service:nvidia-persistenced before the reboot") for p in problems), problems
    assert any(p.startswith("monitoring.dcgm_exporter before the reboot") for p in problems), problems
    assert any(p.startswith("monitoring.gpu_monitor before the reboot") for p in problems), problems


# ------------------------------------------------------------------ every host, before any role ---
ORDER_DEPLOY = """
from types import SimpleNamespace

from pyinfra import host
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations import server

from operations.base_role import every_host_first
from operations.preflight import _os_label

settings = SimpleNamespace(rollout_id=None, deploy_lock_wait_s=1, base_packages={},
                           supported_os=[_os_label(host.get_fact(LinuxDistribution))])


def role_preflight():
    server.shell(name="Role preflight", commands=["true"])


every_host_first(settings, role_preflight=role_preflight)
server.shell(name="First role operation", commands=["true"])
"""


def test_every_host_first_runs_a_roles_preflight_between_the_os_preflight_and_the_base_packages(tmp_path):
    """deploy.py and lab/bench/base_role.py share operations/base_role.every_host_first; a role's
    preflight passed to it (deploy.py's GPU-node preflight) comes out of pyinfra's plan where deploy.py
    had it before the function existed: after the supported-OS preflight, before the base packages.
    (pyinfra orders operations by the call stack's line numbers: the real CLI, against @local.)"""
    (tmp_path / "deploy.py").write_text(ORDER_DEPLOY)
    env = {**os.environ, "PYINFRA_PROGRESS": "off", "PYTHONPATH": str(PROJECT_ROOT),
           "GPUFLEET_CACHE_DIR": str(tmp_path / "cache")}
    run = subprocess.run([str(Path(sys.executable).parent / "pyinfra"), "@local", "deploy.py", "--dry", "--json"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr[-2000:]
    plan = json.loads(run.stdout.strip().splitlines()[-1])["plan"]
    assert [op["name"] for op in plan] == ["Preflight: supported OS", "Role preflight", "Base packages",
                                           "First role operation"]
    deploy, bench = (PROJECT_ROOT / "deploy.py").read_text(), (PROJECT_ROOT / "lab/bench/base_role.py").read_text()
    assert "every_host_first(settings, role_preflight=gpu_node_preflight" in deploy and "every_host_first(" in bench
