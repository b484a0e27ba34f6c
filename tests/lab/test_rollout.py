"""Rollouts on the live lab, under steady load through lb-1: every request is checked.

The order matters: a canary that cannot start is rolled back (the lab stays as deployed); a
plain deploy is refused; a change is rolled over both nodes while gpu-node-2 loses SSH (stopped,
then resumed with --resume), repeated (nothing to do), tried as a plain deploy (nothing to do);
and gpu-node-1 gets another driver and another replica in one rollout. Both nodes keep what was
rolled out: this module runs after every other lab test (tests/lab/conftest.py), and on a kept
lab the next session's first deploy takes it back (through the rollout where a driver changes
under running GPU containers).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from gpufleet.lab.topology import lab_group_data
from tests.lab.conftest import deploy
from tests.lab.steady_load import SteadyLoad, finish_rollout, rollout, start_rollout

NODES = ("gpu-node-1", "gpu-node-2")


def container_ids(hosts) -> dict[str, str]:
    return {n: hosts[n].run(f"docker inspect --format '{{{{.Id}}}}' vllm-{n}-vllm-0").stdout.strip() for n in NODES}


def running_containers(hosts) -> dict[str, dict[str, str]]:
    """``{node: {container name: id}}`` of what runs on each node."""
    out = {}
    for n in NODES:
        lines = hosts[n].run("docker ps --format '{{.Names}} {{.ID}}'").stdout.splitlines()
        out[n] = dict(line.split() for line in lines)
    return out


def drained(hosts) -> list[str]:
    return hosts["lb-1"].run("ls /etc/nginx/gpufleet/drained 2>/dev/null").stdout.split()


def wait_for_state(state_dir, node: str, state: str, timeout: float = 600) -> None:
    """Until the newest rollout's state file shows ``node`` in ``state``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = sorted((Path(state_dir) / "rollouts").glob("r-*.json"), key=lambda f: f.stat().st_mtime)
        if files and json.loads(files[-1].read_text())["nodes"].get(node, {}).get("state") == state:
            return
        time.sleep(0.5)
    raise AssertionError(f"{node} never reached {state}")


def ssh_service(node: str, action: str) -> None:
    """Stop or start sshd on a lab node from outside (existing sessions survive, new ones are refused)."""
    subprocess.run(["docker", "exec", node, "systemctl", action, "ssh"], check=True, timeout=60)


def loaded_driver(node: str) -> str:
    return subprocess.run(["docker", "exec", node, "nvidia-smi", "--query-gpu=driver_version",
                           "--format=csv,noheader"], capture_output=True, text=True, timeout=60).stdout.split()[0]


@pytest.fixture(scope="module")
def live(deployed, hosts):
    return hosts


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("rollouts")


def test_a_canary_that_cannot_start_is_rolled_back_with_no_failed_request(live, state_dir):
    before = container_ids(live)
    # Valid data, but the new container cannot start: its Python has no standard library
    # (PYTHONHOME points nowhere), so it exits at once, again and again. (A flag vLLM refuses, as
    # `--kv-cache-dtype no-such-dtype`, exits the same way but only after vLLM's imports: ~90 s
    # per attempt on a 2-core CI machine, three attempts before the crash loop is called.)
    env = {**lab_group_data()["vllm_env"], "PYTHONHOME": "/nonexistent"}
    with SteadyLoad() as load:
        code, report, err = rollout("--data", f"vllm_env={json.dumps(env)}", state_dir=state_dir)
    assert code == 2, err[-3000:]
    assert report["nodes"]["gpu-node-1"]["state"] == "rolled-back", err[-3000:]
    assert report["nodes"]["gpu-node-2"]["state"] == "pending"
    after = container_ids(live)
    assert after["gpu-node-2"] == before["gpu-node-2"]  # the second node was never touched
    assert after["gpu-node-1"] == before["gpu-node-1"]  # the very container that served before
    assert drained(live) == [] and not load.failures, load.failures[:5]
    assert load.ok > 0
    assert "held by rollout" not in deploy("--dry")["stderr"]  # the canary's lock was released


def test_a_plain_deploy_that_would_recreate_live_replicas_is_refused(live):
    before = container_ids(live)
    refused = deploy("--data", "vllm_max_model_len=384")
    assert refused["rc"] != 0
    assert "would interrupt serving" in refused["stderr"] and "gpufleet rollout" in refused["stderr"]
    assert refused["changed"] == {}
    assert container_ids(live) == before


def test_rolling_a_change_over_both_nodes_fails_no_request_even_when_a_node_drops_out(live, state_dir):
    """gpu-node-2 loses SSH while gpu-node-1 is updated: the rollout stops, the fleet keeps serving,
    and `--resume` finishes it once gpu-node-2 is back."""
    before = container_ids(live)
    everything_before = running_containers(live)
    with SteadyLoad(app_clients=1) as load:
        run = start_rollout("--data", "vllm_max_model_len=384", state_dir=state_dir)
        try:
            wait_for_state(state_dir, "gpu-node-1", "updating")
            ssh_service("gpu-node-2", "stop")
            code, report, err = finish_rollout(run, state_dir)
        finally:
            ssh_service("gpu-node-2", "start")
        assert code == 2, err[-3000:]
        assert report["nodes"]["gpu-node-1"]["state"] == "done"
        assert report["nodes"]["gpu-node-2"]["state"] == "failed"
        assert "unreachable" in report["nodes"]["gpu-node-2"]["error"]
        assert drained(live) == []  # never drained: it kept serving its old spec
        assert container_ids(live)["gpu-node-2"] == before["gpu-node-2"]
        code, report, err = rollout("--resume", state_dir=state_dir)
    assert code == 0, err[-3000:]
    assert [report["nodes"][n]["state"] for n in NODES] == ["done", "done"]
    after = container_ids(live)
    assert all(after[n] != before[n] for n in NODES)
    # Exactly the replicas were recreated: Milvus, the app and the exporters kept their containers.
    everything_after = running_containers(live)
    for n in NODES:
        assert set(everything_after[n]) == set(everything_before[n])
        recreated = {c for c in everything_after[n] if everything_after[n][c] != everything_before[n][c]}
        assert recreated == {f"vllm-{n}-vllm-0"}, (n, recreated)
    args = live["gpu-node-1"].run("docker inspect --format '{{json .Args}}' vllm-gpu-node-1-vllm-0").stdout
    assert '"--max-model-len","384"' in args.replace(" ", "")
    assert drained(live) == []
    assert not load.failures, load.failures[:5]
    assert load.ok > 10 and load.app_ok > 5  # the app behind lb-1 too, drained with each node's replicas
    states = [s for s, _ in report["nodes"]["gpu-node-2"]["history"]]
    assert states[-5:] == ["draining", "updating", "validating", "undraining", "done"]


def test_a_second_rollout_and_the_plain_deploy_then_change_nothing(live, state_dir):
    code, report, err = rollout("--data", "vllm_max_model_len=384", state_dir=state_dir)
    assert code == 0 and "nothing to roll out" in err
    again = deploy("--data", "vllm_max_model_len=384")
    assert again["rc"] == 0 and again["changed"] == {}, again


def lb_members(hosts) -> dict[str, str]:
    """``{replica: "live" | "down"}`` of the vLLM upstream in the nginx config in place on lb-1
    (each node's RAG app is a member of the rag_app upstream, asserted in test_data_tier.py)."""
    lines = hosts["lb-1"].run("grep -E '^ +server .*;  # ' /etc/nginx/nginx.conf").stdout.splitlines()
    members = {line.split("# ", 1)[1].split()[0]: ("down" if " down;" in line else "live") for line in lines}
    return {name: state for name, state in members.items() if not name.endswith("-rag-app")}


def replica_containers(hosts, node: str) -> list[str]:
    out = hosts[node].run("docker ps -a --filter label=io.gpufleet.role=vllm --format '{{.Names}}'").stdout
    return sorted(out.split())


def test_a_driver_version_and_a_replaced_replica_are_rolled_out_with_no_failed_request(live, state_dir):
    """gpu-node-1 gets another driver (drain, stop its GPU containers, install, reboot, check the
    loaded version) and, in the same rollout, its replica vllm-0 (port 8000) is replaced by vllm-1
    (port 8001): the old one is retired, the new one joins the load balancer once ready.

    The last test of the session: gpu-node-1 stays so. The way back is the same path in the other
    direction, so it is left to the next session's first deploy on a kept lab, which takes it
    through the rollout (tests/lab/conftest.py, ``deployed``); CI starts from a fresh lab."""
    from gpufleet.fleet import load_fleet

    pinned = load_fleet("inventory/lab.py").hosts["gpu-node-1"].settings.nvidia_driver_version
    other = "580.105.08"  # the lab repository carries it (lab/standins/packages.toml)
    moved = json.dumps([{"name": "vllm-1", "gpus": [0, 1], "port": 8001}])
    exporter = "docker inspect --format '{{.Id}}' dcgm-exporter"
    exporter_before = live["gpu-node-1"].run(exporter).stdout
    with SteadyLoad() as load:
        code, report, err = rollout("--data", f"nvidia_driver_version={other}", "--data", f"vllm_replicas={moved}",
                                    "--limit", "gpu-node-1", state_dir=state_dir)
    assert code == 0, err[-3000:]
    node = report["nodes"]["gpu-node-1"]
    assert node["kind"] == "gpu-stack" and node["state"] == "done"
    assert loaded_driver("gpu-node-1") == other and loaded_driver("gpu-node-2") == pinned
    # The GPU containers were stopped for the driver and started again, not recreated.
    assert live["gpu-node-1"].run(exporter).stdout == exporter_before
    assert node["retiring"] == ["gpu-node-1-vllm-0"]
    assert replica_containers(live, "gpu-node-1") == ["vllm-gpu-node-1-vllm-1"]  # the old one is gone
    members = lb_members(live)
    assert members["gpu-node-1-vllm-1"] == "live" and "gpu-node-1-vllm-0" not in members
    # gpu-node-2 was not rolled: its old replica keeps serving, its new one waits (not running yet).
    assert members["gpu-node-2-vllm-0"] == "live" and members["gpu-node-2-vllm-1"] == "down"
    assert drained(live) == [] and not load.failures, load.failures[:5]
    assert load.ok > 10
    # What was rolled out holds: the same change as a plain deploy of gpu-node-1 changes nothing.
    again = deploy("--limit", "gpu-node-1", "--data", f"nvidia_driver_version={other}",
                   "--data", f"vllm_replicas={moved}")
    assert again["rc"] == 0 and again["changed"] == {}, again
