"""`make deploy` on the lab: the whole path (inventory, settings, deploy, SSH, apt) end to end."""

import json

import pytest

from tests.lab.conftest import deploy, gpufleet


def test_first_deploy_installs_base_packages_everywhere(deployed, hosts):
    for name, host in hosts.items():
        for package in ("jq", "pciutils", "kmod", "lsb-release"):
            assert host.package(package).is_installed, f"{package} missing on {name}"
        assert host.run("lspci --version").rc == 0


def test_second_deploy_changes_nothing(deployed):
    second = deploy()
    assert second["rc"] == 0, second["stderr"][-3000:]
    assert second["changed"] == {}, f"operations changed on a converged lab: {second['changed']}"


def test_bad_data_stops_before_any_host_is_touched(deployed, hosts):
    node = hosts["gpu-node-1"]
    assert node.run("apt-get remove -y -q jq").rc == 0
    bad = deploy("--data", "vllm_gpu_memory_utilization=1.5")
    assert bad["rc"] != 0
    assert "vllm_gpu_memory_utilization" in bad["stderr"] and "1.5" in bad["stderr"]
    assert "no host was changed" in bad["stderr"]
    assert not node.package("jq").is_installed, "a deploy with invalid data changed a host"
    # and a good run converges the host again, changing only that host
    good = deploy()
    assert good["rc"] == 0
    assert good["changed"] == {"Base packages": ["gpu-node-1"]}


@pytest.mark.parametrize("host_name", ["gpu-node-1", "lb-1"])
def test_preflight_refuses_an_unsupported_os(deployed, host_name):
    refused = deploy("--limit", host_name, "--data", 'supported_os=["Ubuntu 24.04"]')
    assert refused["rc"] != 0
    assert "Debian 12 is not supported" in refused["stderr"]


def test_a_second_deploy_is_refused_while_another_run_holds_the_host(deployed, lab):
    """Another run holds lb-1 (its lock taken over an SSH connection of its own, as deploy.py
    takes it): a deploy is refused before any operation, naming the holder; once that connection
    closes, the deploy runs (operations/deploy_lock.py)."""
    import paramiko

    from gpufleet.lab.topology import KNOWN_HOSTS, SSH_KEY
    from operations.deploy_lock import lock_command

    lb = next(h for h in lab if h.name == "lb-1")
    other = paramiko.SSHClient()
    other.load_host_keys(str(KNOWN_HOSTS))
    other.set_missing_host_key_policy(paramiko.RejectPolicy())
    other.connect("127.0.0.1", port=lb.ssh_port, username="root", key_filename=str(SSH_KEY),
                  look_for_keys=False, allow_agent=False)
    try:
        record = {"holder": "sre@other-control-host", "pid": 4242, "what": "pyinfra deploy", "since": "T0"}
        _, out, _ = other.exec_command(lock_command(record), timeout=30)
        assert out.read().decode().split() == ["ACQUIRED"]
        refused = deploy("--limit", "lb-1")
        assert refused["rc"] != 0
        assert "another run of deploy.py holds this host" in refused["stderr"]
        assert "sre@other-control-host (pid 4242, pyinfra deploy)" in refused["stderr"]
        assert refused["changed"] == {}
        # The nightly drift check does not read a host another run is changing: not checked, named.
        drift = gpufleet("drift", "inventory/lab.py", "--limit", "lb-1", "--json", check=False, timeout=600)
        entry = json.loads(drift.stdout)["hosts"][0]
        assert drift.returncode == 1 and "sre@other-control-host" in entry["error"], entry
    finally:
        other.close()
    after = deploy("--limit", "lb-1")
    assert after["rc"] == 0, after["stderr"][-3000:]
    assert after["changed"] == {}


def test_one_process_plans_a_host_again_right_after_its_last_plan(deployed):
    """gpufleet rollout, drift --fix and the bench plan the same host several times in one process:
    each plan's connections are closed at its end, so the next one gets the deploy lock."""
    from gpufleet.deploy_run import planned

    for _ in range(2):
        with planned("inventory/lab.py", ["lb-1"]) as plan:
            assert plan.errors == {} and [h.name for h in plan.hosts] == ["lb-1"], plan.errors
