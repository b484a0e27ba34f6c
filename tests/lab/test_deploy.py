"""`make deploy` on the lab: the whole path (inventory, settings, deploy, SSH, apt) end to end."""

import pytest

from tests.lab.conftest import deploy


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
