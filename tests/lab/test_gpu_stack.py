"""The GPU host stack on the lab: driver, Docker + toolkit, NCCL pin, reboot gate, verify."""

import json

from tests.lab.conftest import deploy, gpufleet

PINNED = {"nvidia-open", "nvidia-container-toolkit", "libnccl2", "libnccl-dev", "docker.io"}


def test_packages_are_installed_from_the_lab_repository_at_their_pins_and_held(deployed, hosts):
    for name in ("gpu-node-1", "gpu-node-2"):
        node = hosts[name]
        assert PINNED <= set(node.run("apt-mark showhold").stdout.split()), name
        assert node.package("nvidia-open").version == "580.95.05-1"
        assert node.package("nvidia-container-toolkit").version == "1.17.8-1"
        assert node.package("libnccl2").version == "2.27.7-1+cuda12.9"
        assert "Pin: version 2.27.7-1+cuda12.9" in node.file("/etc/apt/preferences.d/gpufleet-nccl").content_string
        policy = node.run("apt-cache policy libnccl2").stdout
        assert "lab-repo/compute/cuda/repos/debian12/x86_64" in policy
    assert not hosts["lb-1"].package("nvidia-open").is_installed


def test_driver_is_loaded_after_the_first_deploy_rebooted_the_node(deployed, hosts):
    node = hosts["gpu-node-1"]
    assert node.run("nvidia-smi --query-gpu=driver_version --format=csv,noheader").stdout.split() == ["580.95.05"] * 2
    assert node.service("nvidia-persistenced").is_running and node.service("nvidia-persistenced").is_enabled
    assert "blacklist nouveau" in node.file("/etc/modprobe.d/gpufleet-blacklist-nouveau.conf").content_string


def test_dkms_built_the_module_against_the_running_kernels_headers_installed_first(deployed, hosts):
    """The lab installs headers as production does (the stand-in kernel archive) and the stand-in
    DKMS, which fails without them, built the module the stand-in kernel loaded at boot."""
    for name in ("gpu-node-1", "gpu-node-2"):
        node = hosts[name]
        kernel = node.check_output("uname -r")
        headers = f"linux-headers-{kernel}"
        assert node.package(headers).is_installed and headers in node.run("apt-mark showhold").stdout.split()
        assert node.file(f"/var/lib/dkms/nvidia/580.95.05/{kernel}/x86_64/module/nvidia.ko").exists
        # The headers were configured before the driver's postinst ran (its DKMS build needs them).
        log = node.file("/var/log/dpkg.log").content_string
        assert log.index(f"configure {headers}:") < log.index("configure nvidia-open:"), name


def test_preflight_stops_a_node_whose_kernel_has_no_headers_naming_the_package(deployed, hosts):
    """The running kernel's headers neither installed nor in any apt source (a custom kernel, an
    archive that dropped them): DKMS could not build the module, so preflight stops the node before
    any change, naming the package. (The stand-in DKMS itself fails the same way: unit-tested.)"""
    node = hosts["gpu-node-2"]
    kernel = node.check_output("uname -r")
    headers = f"linux-headers-{kernel}"
    source = "/etc/apt/sources.list.d/gpufleet-lab-kernel-archive.list"
    node.run_expect([0], f"apt-mark unhold {headers} && dpkg --purge {headers} && mv {source} /root/kernel-archive.list "
                         "&& rm -f /var/lib/apt/lists/lab-repo_kernel-archive_*")
    try:
        refused = deploy("--limit", "gpu-node-2", "--data", "allow_serving_disruption=true")
        assert refused["rc"] != 0, refused
        assert f"no {headers} for the running kernel {kernel} in the apt sources" in refused["stderr"], \
            refused["stderr"][-3000:]
        assert "Starting operation: Base packages" not in refused["stderr"]  # stopped before the first change
        assert not node.package(headers).is_installed
    finally:  # the node as it was: the archive, the headers installed and held
        node.run_expect([0], f"mv /root/kernel-archive.list {source} && apt-get update -q -o Dir::Etc::sourcelist={source} "
                             "-o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0 >/dev/null "
                             f"&& DEBIAN_FRONTEND=noninteractive apt-get install -y -q {headers} >/dev/null "
                             f"&& apt-mark hold {headers} >/dev/null")
    assert deploy("--limit", "gpu-node-2")["changed"] == {}


def test_gpu_containers_see_the_gpus_through_the_toolkit(deployed, hosts):
    out = hosts["gpu-node-2"].run(
        "docker run --rm --gpus '\"device=1\"' lab-registry:5000/gpufleet-lab/toolkit-check:1 nvidia-smi -L")
    assert out.rc == 0, out.stderr
    assert out.stdout.count("NVIDIA GeForce RTX 5090") == 1


def test_daemon_json_is_merged_as_data_and_foreign_keys_survive(deployed, hosts):
    node = hosts["gpu-node-1"]
    config = json.loads(node.file("/etc/docker/daemon.json").content_string)
    assert config["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
    # An operator's own key, the file rewritten in another layout: same data plus one key.
    config["debug"] = False
    node.run(f"printf '%s' '{json.dumps(config, separators=(',', ':'))}' > /etc/docker/daemon.json")
    result = deploy("--limit", "gpu-node-1")
    assert result["rc"] == 0
    assert result["changed"] == {}, result["changed"]
    assert json.loads(node.file("/etc/docker/daemon.json").content_string)["debug"] is False
    # The nvidia runtime removed: daemon.json and the Docker restart change, the key stays. (A
    # Docker restart restarts the node's containers, so readiness gates may wait for them too.)
    del config["runtimes"]
    node.run(f"printf '%s' '{json.dumps(config)}' > /etc/docker/daemon.json")
    # On a live node the serving gate refuses a Docker restart outside a rollout...
    refused = deploy("--limit", "gpu-node-1")
    assert refused["rc"] != 0 and "would interrupt serving" in refused["stderr"], refused["stderr"][-2000:]
    # ... and a maintenance window lets it through.
    result = deploy("--limit", "gpu-node-1", "--data", "allow_serving_disruption=true")
    assert {"Docker daemon.json: nvidia runtime", "Restart Docker for the toolkit"} <= set(result["changed"])
    assert all(op.startswith(("Docker daemon.json", "Restart Docker")) or "healthy" in op or "ready" in op
               for op in result["changed"]), result["changed"]
    restored = json.loads(node.file("/etc/docker/daemon.json").content_string)
    assert restored["debug"] is False and "nvidia" in restored["runtimes"]
    assert "nvidia" in node.run("docker info --format '{{json .Runtimes}}'").stdout


def nccl_in_vllm(node, name: str) -> str:
    out = node.run(f"docker exec vllm-{name}-vllm-0 python3 /opt/gpufleet/vllm_nccl_check.py").stdout
    return json.loads(out)["nccl_version"]


def test_bumping_the_nccl_pin_moves_the_host_and_the_image_and_back(deployed, hosts):
    """One key in group_data: the host packages move, and so does the NCCL inside vLLM's image.
    One node (gpu-node-1; group data is the same for every node, and the two rebuilds of both
    nodes' images cost CI three minutes); gpu-node-2 is checked untouched."""
    node = "gpu-node-1"
    bumped = deploy("--limit", node, "--data", "nccl_version=2.27.3", "--data", "allow_serving_disruption=true")
    try:
        assert bumped["rc"] == 0, bumped["stderr"][-2000:]
        # The image for 2.27.3 is built unless the node has it already (a lab kept from an earlier
        # session): what counts is the NCCL inside the running replica, checked below.
        assert bumped["changed"]["NCCL pin on the host"] == [node]
        assert hosts[node].package("libnccl2").version == "2.27.3-1+cuda12.9"
        assert hosts[node].package("libnccl-dev").version == "2.27.3-1+cuda12.9"
        assert {"libnccl2", "libnccl-dev"} <= set(hosts[node].run("apt-mark showhold").stdout.split())
        assert nccl_in_vllm(hosts[node], node) == "2.27.3"
        assert hosts["gpu-node-2"].package("libnccl2").version == "2.27.7-1+cuda12.9"
    finally:
        back = deploy("--limit", node, "--data", "allow_serving_disruption=true")
    assert back["rc"] == 0
    assert back["changed"]["NCCL pin on the host"] == [node]
    assert hosts[node].package("libnccl2").version == "2.27.7-1+cuda12.9"
    assert nccl_in_vllm(hosts[node], node) == "2.27.7"


def test_a_stale_driver_reboots_exactly_that_node_and_secure_boot_stops_it_without_a_reboot_loop(deployed, hosts):
    """gpu-node-1's loaded driver is stale, and its (stand-in) Secure Boot refuses the unsigned module:
    one reboot, then a stop naming MOK; the next deploy stops at once instead of rebooting again.
    Once the operator fixed it, a deploy reboots exactly that node and it serves again."""
    from gpufleet.lab.faults import secure_boot

    node = hosts["gpu-node-1"]
    pinned = "580.95.05"
    boot_marker = "/run/gpufleet-test-boot-marker"
    node.run(f"sed -i 's/{pinned}/575.57.08/' /run/gpufleet-lab/nvidia/version")
    secure_boot("gpu-node-1", True)
    try:
        # Without a plan for signing modules, preflight stops the node before anything changes.
        refused = deploy("--limit", "gpu-node-1", "--data", "allow_serving_disruption=true")
        assert refused["rc"] != 0 and "Secure Boot is enabled" in refused["stderr"], refused["stderr"][-3000:]
        assert refused["changed"] == {} and node.file("/run/gpufleet-lab/nvidia/version").exists  # no reboot
        # With one ("mok": DKMS signs, the operator enrolled the key) that was never enrolled, the
        # module is refused after the reboot, as on a real host.
        mok = ("--data", "secure_boot_module_signing=mok")
        first = deploy("--data", "allow_serving_disruption=true", *mok)
        assert first["rc"] != 0
        assert "SecureBoot enabled" in first["stderr"] and "mokutil --import" in first["stderr"], first["stderr"][-3000:]
        assert not node.file("/run/gpufleet-lab/nvidia/version").exists  # rebooted, and nothing loaded
        # GPU containers cannot start without the driver, as on a real host.
        assert node.run("docker run --rm --gpus all lab-registry:5000/gpufleet-lab/toolkit-check:1 true").rc != 0
        node.run(f"touch {boot_marker}")
        second = deploy("--limit", "gpu-node-1", "--data", "allow_serving_disruption=true", *mok)
        assert second["rc"] != 0 and "not rebooting again" in second["stderr"], second["stderr"][-3000:]
        assert node.file(boot_marker).exists, "the second deploy rebooted the node again"
    finally:
        secure_boot("gpu-node-1", False)
        node.run(f"rm -f /var/lib/gpufleet/driver-reboots/{pinned}")
    fixed = deploy("--data", "allow_serving_disruption=true")
    assert fixed["rc"] == 0, fixed["stderr"][-3000:]
    assert fixed["changed"]["Reboot if the loaded driver is not the pinned one"] == ["gpu-node-1"]
    assert all(h == ["gpu-node-1"] for h in fixed["changed"].values()), fixed["changed"]  # exactly that node
    assert not node.file(boot_marker).exists, "gpu-node-1 did not reboot"
    assert pinned in node.file("/run/gpufleet-lab/nvidia/version").content_string
    assert deploy()["changed"] == {}


def test_verify_passes_and_a_stopped_driver_fails_exactly_that_host(deployed, hosts):
    ok = gpufleet("verify", "inventory/lab.py", "--json", check=False)
    assert ok.returncode == 0, ok.stdout
    assert json.loads(ok.stdout)["ok"] is True
    hosts["gpu-node-2"].run("systemctl stop nvidia-standin-driver")
    try:
        bad = gpufleet("verify", "inventory/lab.py", "--json", check=False)
        report = json.loads(bad.stdout)
        assert bad.returncode == 2
        assert [(f["host"], f["step"]) for f in report["failures"]] == [("gpu-node-2", "driver")]
        assert "exited 9" in report["failures"][0]["detail"]
    finally:
        hosts["gpu-node-2"].run("systemctl start nvidia-standin-driver")


def test_preflight_stops_a_node_whose_gpus_run_on_a_narrow_link_before_any_change(deployed, hosts):
    """A change that would recreate gpu-node-2's replica, on a node whose GPUs sit on x4 links:
    preflight refuses the node, naming the link, and nothing on it changes."""
    from gpufleet.lab.faults import pcie_link_width

    node = hosts["gpu-node-2"]
    replica = "vllm-gpu-node-2-vllm-0"
    before = node.run(f"docker inspect --format '{{{{.Id}}}}' {replica}").stdout.strip()
    pcie_link_width("gpu-node-2", 4)
    try:
        refused = deploy("--limit", "gpu-node-2", "--data", "vllm_max_model_len=384",
                         "--data", "allow_serving_disruption=true")
        assert refused["rc"] != 0, refused
        assert "runs at PCIe x4 (expected at least x16)" in refused["stderr"], refused["stderr"][-3000:]
        assert refused["changed"] == {}
        assert node.run(f"docker inspect --format '{{{{.Id}}}}' {replica}").stdout.strip() == before
    finally:
        pcie_link_width("gpu-node-2", None)
    assert deploy("--limit", "gpu-node-2")["changed"] == {}
