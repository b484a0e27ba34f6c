"""Fixtures for lab integration tests: a running lab, pyinfra runs against it, testinfra hosts.

The lab is started once per session (`gpufleet lab up`, which adopts a lab that is already up)
and left running afterwards, so `make deploy` and a re-run of the tests stay warm.
`make lab-down` removes it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import testinfra

from gpufleet import PROJECT_ROOT
from operations.docker_daemon import DAEMON_RELOAD_REFUSAL
from gpufleet.lab.topology import KNOWN_HOSTS, SSH_KEY, read_hosts_file

BIN = Path(sys.executable).parent
LAB_INVENTORY = "inventory/lab.py"


def gpufleet(*args: str, check: bool = True, timeout: int = 1200) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "gpufleet"), *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=timeout, check=check)


def pyinfra(*args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    """Run the pyinfra CLI as an operator would, from the project root, never prompting."""
    env = {**os.environ, "PYINFRA_PROGRESS": "off"}
    return subprocess.run([str(BIN / "pyinfra"), "-y", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def deploy(*extra: str) -> dict:
    """`pyinfra -y --json inventory/lab.py deploy.py`; returns {"changed": {op: [hosts]}, "failed": [...], "rc"}."""
    run = pyinfra("--json", LAB_INVENTORY, "deploy.py", *extra)
    report = {"rc": run.returncode, "stderr": run.stderr, "changed": {}, "failed": []}
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    if lines:
        results = json.loads(lines[-1]).get("results") or {}
        report["changed"] = {op["name"]: op["success"] for op in results.get("operations", []) if op["success"]}
        report["failed"] = results.get("failed_hosts", [])
    return report


# In this order, after every other lab test: they leave the lab changed (Milvus on db-1; rolled-out
# changes on the GPU nodes) for the next session's lab fixture and first deploy to take back.
LAST_MODULES = ("test_data_host.py", "test_rollout.py")


def pytest_collection_modifyitems(config, items):
    """The data-host and rollout tests run after every other lab test (LAST_MODULES)."""
    here = Path(__file__).parent
    last = sorted((item for item in items if item.path.parent == here and item.path.name in LAST_MODULES),
                  key=lambda item: LAST_MODULES.index(item.path.name))  # stable: file order within a module
    if not last:
        return
    rest = [item for item in items if item not in last]
    lab_positions = [i for i, item in enumerate(rest) if item.path.parent == here]
    at = lab_positions[-1] + 1 if lab_positions else len(rest)
    items[:] = rest[:at] + last + rest[at:]


LAB_SHAPE = ("--nodes", "2", "--lbs", "1")


@pytest.fixture(scope="session")
def lab():
    """The running lab's hosts (LabHost list)."""
    up = gpufleet("lab", "up", *LAB_SHAPE, check=False)
    assert up.returncode == 0, f"gpufleet lab up failed:\n{up.stderr[-3000:]}"
    return read_hosts_file()


@pytest.fixture(scope="session")
def deployed(lab):
    """The lab after one full deploy (the first run of the session): a maintenance window, so that
    a lab kept from an earlier session converges whatever that session's last tests changed."""
    first = deploy("--data", "allow_serving_disruption=true")
    if first["rc"] != 0 and DAEMON_RELOAD_REFUSAL in first["stderr"]:
        # A kept lab whose last session ended with its rollout tests: gpu-node-1 runs another
        # driver (tests/lab/test_rollout.py). No plain deploy swaps a driver under running GPU
        # containers; the rollout drains the node, stops them and takes it back.
        back = gpufleet("rollout", LAB_INVENTORY, "--yes", check=False, timeout=1800)
        assert back.returncode == 0, back.stderr[-4000:]
        first = deploy("--data", "allow_serving_disruption=true")
    assert first["rc"] == 0, first["stderr"][-4000:]
    return first


def host_over_ssh(lab_host, tmp_path_factory) -> testinfra.host.Host:
    config = tmp_path_factory.mktemp("ssh") / "config"
    config.write_text(
        f"Host {lab_host.name}\n  HostName 127.0.0.1\n  Port {lab_host.ssh_port}\n  User root\n"
        f"  IdentityFile {SSH_KEY}\n  UserKnownHostsFile {KNOWN_HOSTS}\n  StrictHostKeyChecking yes\n"
    )
    return testinfra.get_host(f"paramiko://{lab_host.name}", ssh_config=str(config))


@pytest.fixture(scope="session")
def hosts(lab, tmp_path_factory) -> dict[str, testinfra.host.Host]:
    return {h.name: host_over_ssh(h, tmp_path_factory) for h in lab}


# --------------------------------------------------------------------------- drift (test_drift*.py) -----
NODE = "gpu-node-2"  # the node drift cases change


def drift(*args: str) -> tuple[int, dict]:
    run = gpufleet("drift", "inventory/lab.py", "--json", *args, check=False, timeout=600)
    return run.returncode, json.loads(run.stdout)


def causes(report: dict, host: str) -> list[str]:
    entry = next(h for h in report["hosts"] if h["host"] == host)
    return [f"[{d['kind']}] {d['check']}: {d['cause']} {' '.join(d['details'])}" for d in entry["drift"]]


def assert_only_drifted(host: str, expected: str) -> None:
    """Drift exits 2 with exactly ``host`` drifted, and one of its causes says ``expected``."""
    code, report = drift()
    assert code == 2, report
    assert report["drifted_hosts"] == [host]
    found = causes(report, host)
    assert any(expected in c for c in found), found


@pytest.fixture(scope="module")
def converged(deployed, hosts):
    """The lab deployed and drift-clean, once per test module."""
    result = deploy()
    assert result["rc"] == 0, result["stderr"][-3000:]
    code, report = drift()
    assert code == 0, report
    return hosts

