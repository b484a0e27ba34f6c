"""The verify ladder on captured outputs: a real 2x H200 machine, published RTX 5090 output."""

from __future__ import annotations

import json
from pathlib import Path

from gpufleet.settings import HostSettings
from gpufleet.verify import as_json, exit_code, run_ladder
from operations.facts import gpu, pci
from operations.facts.util import RC

REPO = Path(__file__).resolve().parents[2]
H200 = REPO / "tests/fixtures/gpu/h200-x2"
RTX5090 = REPO / "tests/fixtures/gpu/rtx5090-x2-published"
FLEET = HostSettings(gpu_count=2, gpu_memory_gib=31.84)  # the fleet's GPU node settings


def wrapped(path: Path, rc: int = 0) -> list[str]:
    return path.read_text().splitlines() + [f"{RC}{rc}"]


class FixtureProbe:
    """A Probe answering from captured outputs; records which steps asked for what."""

    def __init__(self, pci_lines, gpu_lines, driver_lines, packages=None, toolkit=(True, ""), topo_lines=None,
                 acs=None):
        self._pci, self._gpus, self._driver = pci_lines, gpu_lines, driver_lines
        self._packages, self._toolkit, self._topo = packages or {}, toolkit, topo_lines
        self._acs = acs or {"status": "ok", "acs_enabled": False, "gpus": [], "caps_readable": True}
        self.asked: list[str] = []

    def pci(self):
        self.asked.append("pci")
        return pci.NvidiaPciDevices().process(self._pci)

    def gpus(self):
        self.asked.append("gpus")
        return gpu.NvidiaGpus().process(self._gpus)

    def driver(self):
        return gpu.NvidiaDriver().process(self._driver)

    def packages(self, names):
        return {n: self._packages[n] for n in names if n in self._packages}

    def toolkit(self, image):
        self.asked.append("toolkit")
        return self._toolkit

    def topology(self):
        return gpu.NvidiaTopology().process(self._topo)

    def acs(self):
        return self._acs


def h200_probe(**kwargs) -> FixtureProbe:
    return FixtureProbe(
        wrapped(H200 / "verify/pci-fact-output.txt", rc=0)[:-1],  # the capture already ends with its rc line
        wrapped(H200 / "nvidia-smi-query-gpu.csv"),
        wrapped(H200 / "proc-driver-nvidia-version.txt"),
        **kwargs,
    )


def test_h200_against_the_fleet_fails_at_the_driver_step_naming_the_compute_capability():
    probe = h200_probe()
    report = run_ladder("h200", FLEET, probe)
    assert [c.step for c in report.checks] == ["pci", "driver"]
    assert report.checks[0].status == "pass" and "2 NVIDIA GPUs" in report.checks[0].detail
    assert report.failed_step == "driver"
    assert "compute capability 9.0, expected 12.0" in report.checks[1].detail
    assert "GPU NVIDIA H200, expected NVIDIA GeForce RTX 5090" in report.checks[1].detail
    assert "toolkit" not in probe.asked, "the ladder went on past a failed step"
    assert exit_code([report]) == 2


def test_ladder_matches_what_verify_printed_on_the_real_machine():
    # tests/fixtures/device_verify.sh ran `gpufleet verify @local` on the H200 machine over pyinfra.
    printed = json.loads((H200 / "verify/verify-as-5090.json").read_text())
    report = run_ladder("@local", FLEET, h200_probe())
    assert as_json([report]) == printed


def test_h200_described_correctly_passes_the_gpu_checks_and_the_ladder_goes_on():
    h200 = HostSettings(gpu_count=2, gpu_name="NVIDIA H200", gpu_compute_capability=9.0, gpu_memory_gib=140,
                        nvidia_driver_branch=580, nvidia_driver_version="580.159.04", vllm_model="Qwen/Qwen3-8B",
                        vllm_quantization=None)
    probe = h200_probe(packages={"nvidia-open": {"version": "580.159.04-1", "held": True}},
                       toolkit=(False, "docker: command not found"))
    report = run_ladder("h200", h200, probe)
    assert [c.status for c in report.checks] == ["pass", "pass", "fail"]
    assert report.failed_step == "toolkit" and "docker: command not found" in report.checks[2].detail


def test_rtx5090_node_passes_every_step_and_reads_pcie_topology():
    gpus = ["0, NVIDIA GeForce RTX 5090, GPU-1, 12.0, 32607 MiB, 580.95.05, 00000000:01:00.0",
            "1, NVIDIA GeForce RTX 5090, GPU-2, 12.0, 32607 MiB, 580.95.05, 00000000:02:00.0", f"{RC}0"]
    probe = FixtureProbe(
        ["0000:01:00.0 VGA compatible controller [0300]: NVIDIA Corporation GB202 [GeForce RTX 5090] [10de:2b85] (rev a1)",
         "0000:02:00.0 VGA compatible controller [0300]: NVIDIA Corporation GB202 [GeForce RTX 5090] [10de:2b85] (rev a1)",
         f"{RC}0"],
        gpus,
        ["NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build  (x@y)  date", f"{RC}0"],
        packages={"nvidia-open": {"version": "580.95.05-1", "held": True},
                  "libnccl2": {"version": "2.27.7-1+cuda12.9", "held": True}},
        toolkit=(True, "GPU 0: NVIDIA GeForce RTX 5090 (UUID: GPU-1)\nGPU 1: NVIDIA GeForce RTX 5090 (UUID: GPU-2)"),
        topo_lines=wrapped(RTX5090 / "nvidia-smi-topo-m.txt"),
    )
    report = run_ladder("gpu-node-01", FLEET, probe)
    assert report.ok, report.checks
    assert [c.step for c in report.checks] == ["pci", "driver", "toolkit", "nccl", "topology"]
    assert "PCIe, no NVLink" in report.checks[-1].detail


def test_acs_on_the_p2p_path_is_a_warning_with_the_fix_not_a_failure():
    probe = FixtureProbe([], [], [], topo_lines=wrapped(RTX5090 / "nvidia-smi-topo-m.txt"),
                         acs={"status": "ok", "acs_enabled": True, "redirecting": ["0000:00:01.1"], "gpus": [{}],
                              "caps_readable": True})
    from gpufleet.verify import check_topology

    checks = check_topology(FLEET, probe)
    warn = [c for c in checks if c.status == "warn"]
    assert warn and "0000:00:01.1" in warn[0].detail and "NCCL_P2P_DISABLE" in warn[0].fix


def test_driver_not_loaded_fails_with_the_reboot_advice():
    no_driver = ["NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.", f"{RC}9"]
    probe = h200_probe()
    probe._gpus = no_driver
    report = run_ladder("n", FLEET, probe)
    assert report.failed_step == "driver" and "exited 9" in report.checks[-1].detail
    assert "reboot" in report.checks[-1].fix


def test_host_without_gpus_is_not_laddered():
    report = run_ladder("lb-01", HostSettings(gpu_count=0), h200_probe())
    assert report.ok and len(report.checks) == 1


class RecordingHost:
    """A pyinfra host that records every command and the arguments it was run with."""

    def __init__(self, data: dict):
        self.data = data
        self.ran: list[tuple[str, dict]] = []

    def run_shell_command(self, command, **arguments):
        from types import SimpleNamespace

        self.ran.append((str(command), arguments))
        return True, SimpleNamespace(combined_lines=[])

    def get_temp_filename(self, hash_key):
        return f"/tmp/pyinfra-{hash_key}"

    def put_file(self, src, dest):
        return True


def test_the_docker_runs_of_verify_use_sudo_when_the_host_asks_for_it():
    """Docker needs root (the nodes' `_sudo = True`, as for the deploy): the toolkit and NCCL steps'
    `docker run` are raw commands, which get no `_sudo` from host data unless passed."""
    from gpufleet.verify import HostProbe

    host = RecordingHost({"_sudo": True})
    probe = HostProbe(host, FLEET)
    probe.toolkit("gpufleet/vllm-rtx5090:6e73")
    probe.nccl_acceptance()
    docker_runs = [(command, arguments) for command, arguments in host.ran if command.startswith("docker run")]
    assert len(docker_runs) == 2 and all(arguments.get("_sudo") is True for _, arguments in docker_runs)
    # The neighbour: a host that logs in as root asks for nothing more.
    host = RecordingHost({})
    HostProbe(host, FLEET).toolkit("gpufleet/vllm-rtx5090:6e73")
    assert "_sudo" not in host.ran[0][1]
