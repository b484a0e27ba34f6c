"""The lab's stand-ins fail the way the real NVIDIA parts fail: no driver, a driver upgraded and not
rebooted, Secure Boot refusing an unsigned module. Each is run as the lab runs it (sh or python3),
with the messages and exit codes of the real tools (sources in the comments of each stand-in)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STANDINS = REPO / "lab/standins"
OPEN = ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {v}  Release Build  (gpufleet-lab@standin)  "
        "Thu Dec  3 10:00:00 UTC 2026\n")


@pytest.fixture
def root(tmp_path):
    """A lab host's files under GPUFLEET_LAB_ROOT, and a dpkg-query that says nvidia-open 580.105.08 is installed."""
    (tmp_path / "etc/gpufleet-lab").mkdir(parents=True)
    (tmp_path / "etc/gpufleet-lab/gpus.json").write_text(json.dumps(
        [{"name": "NVIDIA GeForce RTX 5090", "memory_mib": 32607, "compute_capability": "12.0",
          "pci_bus_id": "00000000:01:00.0"}]))
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dpkg-query").write_text("#!/bin/sh\necho '580.105.08-1'\n")
    (bin_dir / "dpkg-query").chmod(0o755)
    return tmp_path


KERNEL = "6.1.0-27-amd64"  # the running kernel, as `uname -r` says it to the stand-ins


def env(root, kernel=KERNEL):
    return {**os.environ, "PATH": f"{root / 'bin'}:{os.environ['PATH']}", "GPUFLEET_LAB_ROOT": str(root),
            "GPUFLEET_LAB_KERNEL": kernel}


def dkms_build(root, kernel=KERNEL):
    return subprocess.run(["sh", str(STANDINS / "dkms-build")], capture_output=True, text=True, env=env(root, kernel))


def load(root, version):
    (root / "run/gpufleet-lab/nvidia").mkdir(parents=True, exist_ok=True)
    (root / "run/gpufleet-lab/nvidia/version").write_text(OPEN.format(v=version))


def smi(root, *args):
    return subprocess.run([sys.executable, str(STANDINS / "nvidia-smi"), *args], capture_output=True, text=True,
                          env=env(root))


def test_nvidia_smi_without_a_driver_exits_9(root):
    run = smi(root, "-L")
    assert run.returncode == 9 and "couldn't communicate with the NVIDIA driver" in run.stdout


def test_nvidia_smi_after_an_upgrade_without_reboot_is_a_version_mismatch(root):
    load(root, "580.95.05")
    run = smi(root, "-L")
    assert run.returncode == 18
    assert run.stdout == "Failed to initialize NVML: Driver/library version mismatch\nNVML library version: 580.105\n"
    load(root, "580.105.08")
    assert smi(root, "-L").returncode == 0


def test_persistenced_fails_without_a_driver_and_stays_up_with_one(root):
    daemon = ["sh", str(STANDINS / "nvidia-persistenced")]
    failed = subprocess.run(daemon, capture_output=True, text=True, env=env(root), timeout=30)
    assert failed.returncode == 1
    assert "nvidia-persistenced failed to initialize. Check syslog for more details." in failed.stderr
    load(root, "580.105.08")
    with pytest.raises(subprocess.TimeoutExpired):  # a daemon: it does not return
        subprocess.run(daemon, capture_output=True, env=env(root), timeout=2)


def hook_failure(root):
    """The hook's driver check, with its paths moved under ``root``."""
    source = (STANDINS / "nvidia-container-runtime-hook").read_text()
    source = source.replace('LOADED = "/run/gpufleet-lab/nvidia/version"',
                            f'LOADED = "{root}/run/gpufleet-lab/nvidia/version"')
    namespace = {"__name__": "hook"}
    old = os.environ["PATH"]
    os.environ["PATH"] = env(root)["PATH"]
    try:
        exec(compile(source, "nvidia-container-runtime-hook", "exec"), namespace)
        return namespace["driver_failure"]()
    finally:
        os.environ["PATH"] = old


def test_the_runtime_hook_refuses_gpu_containers_as_nvidia_container_cli_does(root):
    assert hook_failure(root) == "driver not loaded"
    load(root, "580.95.05")
    assert hook_failure(root) == "driver/library version mismatch"
    load(root, "580.105.08")
    assert hook_failure(root) is None


def test_secure_boot_keeps_the_unsigned_module_out_and_mokutil_says_so(root):
    load_driver = ["sh", str(STANDINS / "load-driver")]
    (root / "etc/gpufleet-lab/secure-boot").write_text("enabled\n")
    refused = subprocess.run(load_driver, capture_output=True, text=True, env=env(root))
    assert refused.returncode == 1 and "Key was rejected by service" in refused.stderr
    assert not (root / "run/gpufleet-lab/nvidia/version").exists()
    mok = subprocess.run(["sh", str(STANDINS / "mokutil"), "--sb-state"], capture_output=True, text=True, env=env(root))
    assert mok.stdout == "SecureBoot enabled\n"
    (root / "var/lib/gpufleet-lab").mkdir(parents=True)
    (root / "var/lib/gpufleet-lab/mok-enrolled").write_text("")  # the key enrolled: it loads
    (root / f"lib/modules/{KERNEL}/build").mkdir(parents=True)
    assert dkms_build(root).returncode == 0  # (the module DKMS built at install time)
    assert subprocess.run(load_driver, env=env(root)).returncode == 0
    assert "580.105.08" in (root / "run/gpufleet-lab/nvidia/version").read_text()


def test_dkms_without_the_running_kernels_headers_fails_naming_the_package(root):
    """As dkms 3 does in the driver's postinst: the install fails (dpkg: half-configured)."""
    run = dkms_build(root)
    assert run.returncode == 1
    assert f"Your kernel headers for kernel {KERNEL} cannot be found at /lib/modules/{KERNEL}/build" in run.stderr
    assert f"Please install the linux-headers-{KERNEL} package" in run.stderr
    assert not (root / "var/lib/dkms").exists()


def test_a_kernel_nobody_built_the_module_for_boots_without_a_driver(root):
    """Headers there at install time: the module is built for that kernel, and loads. A new
    kernel installed later without its headers has no module: modprobe fails at boot."""
    load_driver = ["sh", str(STANDINS / "load-driver")]
    (root / f"lib/modules/{KERNEL}/build").mkdir(parents=True)
    built = dkms_build(root)
    assert built.returncode == 0 and f"nvidia/580.105.08, {KERNEL}, x86_64: installed" in built.stdout
    assert subprocess.run(load_driver, env=env(root)).returncode == 0
    newer = "6.1.0-28-amd64"
    refused = subprocess.run(load_driver, capture_output=True, text=True, env=env(root, newer))
    assert refused.returncode == 1
    assert refused.stderr == f"modprobe: FATAL: Module nvidia not found in directory /lib/modules/{newer}\n"
