"""GPU fact parsers on real captures (2x H200, tests/fixtures/gpu/h200-x2), published RTX 5090
output (tests/fixtures/gpu/rtx5090-x2-published, see its SOURCE), the failure cases, and the lab's
stand-in nvidia-smi run as a subprocess and read back through the same parsers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from operations.facts import gpu, kernel, pci
from operations.facts.util import envelope
from tests.unit.smi_table import parse_smi_table

REPO = Path(__file__).resolve().parents[2]
H200 = REPO / "tests/fixtures/gpu/h200-x2"
RTX5090 = REPO / "tests/fixtures/gpu/rtx5090-x2-published"
STANDIN = REPO / "lab/standins/nvidia-smi"
LOAD_DRIVER = REPO / "lab/standins/load-driver"
NO_DRIVER = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running."
)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


# --- real H200 capture -------------------------------------------------------------------------

def test_h200_query_gpu():
    gpus = gpu.parse_query_gpu(lines(H200 / "nvidia-smi-query-gpu.csv"))
    assert [g["index"] for g in gpus] == [0, 1]
    assert {g["name"] for g in gpus} == {"NVIDIA H200"}
    assert {g["compute_capability"] for g in gpus} == {"9.0"}
    assert {g["memory_mib"] for g in gpus} == {143771}
    assert {g["driver_version"] for g in gpus} == {"580.159.04"}
    assert [g["pci_bus_id"] for g in gpus] == ["00000000:00:06.0", "00000000:00:07.0"]
    assert gpus[0]["uuid"] == "GPU-106a3a29-ddb6-3a1a-d894-5ed25399df2a"


@pytest.mark.parametrize("name", ["nvidia-smi-query-wide-csv.txt", "nvidia-smi-query-wide-csv-nounits.txt",
                                  "nvidia-smi-query-wide-csv-noheader-nounits.txt"])
def test_h200_query_gpu_any_csv_format(name):
    # Same first seven fields; header lines (kept by csv / csv,nounits) are skipped; nounits drops "MiB".
    gpus = gpu.parse_query_gpu(lines(H200 / name))
    assert [(g["index"], g["memory_mib"], g["compute_capability"]) for g in gpus] == [
        (0, 143771, "9.0"), (1, 143771, "9.0")]


def test_h200_topology_is_nvlink():
    topo = gpu.parse_topology(lines(H200 / "nvidia-smi-topo-m.txt"))
    assert topo["gpus"] == ["GPU0", "GPU1"]
    assert topo["links"] == {"GPU0": {"GPU1": "NV18"}, "GPU1": {"GPU0": "NV18"}}
    assert topo["nvlink"] is True
    assert topo["affinity"]["GPU0"] == {"CPU Affinity": "0-31", "NUMA Affinity": "0", "GPU NUMA ID": None}


def test_h200_driver_is_open():
    assert gpu.parse_driver_version(lines(H200 / "proc-driver-nvidia-version.txt")) == {
        "version": "580.159.04", "flavor": "open", "gcc": "gcc version 15.3.0 (GCC)"}


def test_h200_table_and_modules():
    table = parse_smi_table(lines(H200 / "nvidia-smi.txt"))
    assert (table["driver_version"], table["cuda_version"]) == ("580.159.04", "13.0")
    assert [(g["name"], g["memory_total_mib"]) for g in table["gpus"]] == [("NVIDIA H200", 143771)] * 2
    assert kernel.parse_modules(lines(H200 / "proc-modules.txt")) == ["nvidia_uvm", "nvidia"]


def test_h200_pyinfra_facts_from_the_machine():
    # What `pyinfra @local fact ...` returned on the machine itself must equal our parse of the raw output.
    live = json.loads((H200 / "pyinfra-facts.json").read_text())
    for key, cls in [("operations.facts.gpu.NvidiaGpus", gpu.NvidiaGpus),
                     ("operations.facts.gpu.NvidiaTopology", gpu.NvidiaTopology),
                     ("operations.facts.gpu.NvidiaDriver", gpu.NvidiaDriver),
                     ("operations.facts.kernel.GpuKernelModules", kernel.GpuKernelModules),
                     ("operations.facts.pci.NvidiaPciDevices", pci.NvidiaPciDevices)]:
        raw = lines(H200 / "facts-raw" / (key.split(".", 2)[2] + ".txt"))
        assert live[key]["@local"] == json.loads(json.dumps(cls().process(raw))), key
    assert live["operations.facts.gpu.NvidiaGpus"]["@local"]["count"] == 2
    assert live["operations.facts.pci.NvidiaPciDevices"]["@local"]["status"] == "missing"  # no lspci there


# --- published RTX 5090 output -----------------------------------------------------------------

def test_rtx5090_topology_pcie_without_nvlink():
    topo = gpu.parse_topology(lines(RTX5090 / "nvidia-smi-topo-m.txt"))
    assert topo["links"] == {"GPU0": {"GPU1": "PHB"}, "GPU1": {"GPU0": "PHB"}}
    assert topo["nvlink"] is False
    assert topo["affinity"]["GPU1"]["CPU Affinity"] == "0-63"


def test_rtx5090_topology_with_spaces_instead_of_tabs():
    text = (RTX5090 / "nvidia-smi-topo-m.txt").read_text().expandtabs(8).splitlines()
    assert gpu.parse_topology(text)["links"]["GPU0"] == {"GPU1": "PHB"}


@pytest.mark.parametrize("name,driver,cuda,count", [("nvidia-smi-610.txt", "610.57.04", "13.3", 2),
                                                    ("nvidia-smi-580.txt", "580.82.09", "13.0", 1)])
def test_rtx5090_table(name, driver, cuda, count):
    table = parse_smi_table(lines(RTX5090 / name))
    assert (table["driver_version"], table["cuda_version"]) == (driver, cuda)
    assert len(table["gpus"]) == count
    assert {(g["name"], g["memory_total_mib"]) for g in table["gpus"]} == {("NVIDIA GeForce RTX 5090", 32607)}


def test_published_open_driver_and_license():
    parsed = gpu.parse_driver_version(lines(RTX5090 / "proc-driver-nvidia-version-open.txt"))
    assert (parsed["version"], parsed["flavor"]) == ("525.60.11", "open")
    assert "Dual MIT/GPL" in (RTX5090 / "modinfo-nvidia-license.txt").read_text()


def test_proprietary_driver_flavor():
    line = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 01:44:30 UTC 2024"
    parsed = gpu.parse_driver_version([line])
    assert (parsed["version"], parsed["flavor"]) == ("550.54.14", "proprietary")


def test_lspci_finds_only_nvidia_gpus():
    # The 3090 lines are published (club-3090 PR #594); the 5090 line is built from the RTX 5090's
    # PCI id 10de:2b85 (NVIDIA/open-gpu-kernel-modules#862) in lspci -nn's format: no published copy found.
    out = [
        "05:00.0 VGA compatible controller [0300]: NVIDIA Corporation GA102 [GeForce RTX 3090] [10de:2204] (rev a1)",
        "05:00.1 Audio device [0403]: NVIDIA Corporation GA102 High Definition Audio Controller [10de:1aef] (rev a1)",
        "0000:01:00.0 VGA compatible controller [0300]: NVIDIA Corporation GB202 [GeForce RTX 5090] [10de:2b85] (rev a1)",
        "0000:18:00.0 3D controller [0302]: NVIDIA Corporation GH100 [H100 SXM5 80GB] [10de:2330] (rev a1)",
        "00:1f.2 SATA controller [0106]: Intel Corporation C620 Series Chipset [8086:a182] (rev 09)",
    ]
    devices = pci.parse_lspci_nn(out)
    assert [(d["bus_id"], d["device_id"], d["class"]) for d in devices] == [
        ("0000:05:00.0", "2204", "0300"), ("0000:01:00.0", "2b85", "0300"), ("0000:18:00.0", "2330", "0302")]
    assert devices[1]["description"] == "NVIDIA Corporation GB202 [GeForce RTX 5090]"


def test_acs_unreadable_without_root():
    out = ["0000:00:01.1 PCI bridge [0604]: AMD Starship/Matisse GPP Bridge [1022:1483]",
           "\tCapabilities: <access denied>",
           "0000:01:00.0 VGA compatible controller [0300]: NVIDIA Corporation GB202 [GeForce RTX 5090] [10de:2b85]",
           "\tCapabilities: <access denied>",
           pci.SYSFS_MARK, "/sys/devices/pci0000:00/0000:00:01.1/0000:01:00.0"]
    acs = pci.parse_acs(out)
    assert acs["caps_readable"] is False and acs["acs_enabled"] is False
    assert acs["gpus"] == [{"bus_id": "0000:01:00.0", "upstream": ["0000:00:01.1"]}]


def test_secure_boot_sources():
    assert kernel.parse_secure_boot(["__gpufleet_sb=mokutil", "SecureBoot disabled"])["state"] == "disabled"
    assert kernel.parse_secure_boot(["__gpufleet_sb=efivar", " 6 0 0 0 1"])["state"] == "enabled"
    assert kernel.parse_secure_boot(["__gpufleet_sb=unknown"])["state"] == "unknown"
    assert kernel.parse_secure_boot(lines(H200 / "facts-raw/kernel.SecureBoot.txt"))["state"] == "unsupported"


# --- failures never fail the host, and say so ---------------------------------------------------

def test_driver_not_loaded_exit9_is_reported():
    value = gpu.NvidiaGpus().process([NO_DRIVER, "", "__gpufleet_rc=9"])
    assert (value["status"], value["exit_code"], value["count"]) == ("failed", 9, 0)
    assert value["error"] == NO_DRIVER
    topo = gpu.NvidiaTopology().process([NO_DRIVER, "__gpufleet_rc=9"])
    assert (topo["status"], topo["nvlink"], topo["links"]) == ("failed", False, {})


def test_bad_field_real_error_is_reported():
    out = lines(H200 / "nvidia-smi-query-bad-field.txt") + ["__gpufleet_rc=2"]
    value = gpu.NvidiaGpus().process(out)
    assert (value["status"], value["exit_code"]) == ("failed", 2)
    assert value["error"] == 'Field "bogus_field" is not a valid field to query.'


def test_missing_tool_and_driver():
    assert gpu.NvidiaGpus().process(["__gpufleet_missing"])["status"] == "missing"
    driver = gpu.NvidiaDriver().process(["__gpufleet_missing"])
    assert (driver["status"], driver["loaded"], driver["version"]) == ("missing", False, None)


@pytest.mark.parametrize("cls", [gpu.NvidiaGpus, gpu.NvidiaTopology, pci.NvidiaPciDevices, pci.PcieAcs])
def test_fact_commands_always_exit_zero(tmp_path, cls):
    # A failing tool (exit 9, like nvidia-smi without a driver) and a missing one: sh must exit 0.
    tool = "lspci" if cls.__module__.endswith("pci") else "nvidia-smi"
    fake = tmp_path / tool
    fake.write_text(f'#!/bin/sh\necho "{NO_DRIVER}"\nexit 9\n')
    fake.chmod(0o755)
    # Every other tool of this machine, but not the real one (pciutils may be installed here).
    others = tmp_path / "others"
    others.mkdir()
    for directory in ("/usr/bin", "/bin"):
        for name in os.listdir(directory):
            if name != tool and not (others / name).exists():
                (others / name).symlink_to(os.path.join(directory, name))
    env = {"PATH": f"{tmp_path}:{others}"}
    command = cls.command if isinstance(cls.command, str) else cls().command()
    run = subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=env)
    assert run.returncode == 0
    value = cls().process(run.stdout.splitlines())
    assert (value["status"], value["exit_code"]) == ("failed", 9)
    fake.unlink()
    run = subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=env)
    # Without lspci the GPU list falls back to sysfs (an answer); the ACS view needs lspci.
    expected = "ok" if cls is pci.NvidiaPciDevices else "missing"
    assert run.returncode == 0 and cls().process(run.stdout.splitlines())["status"] == expected


def test_envelope_requires_the_marker():
    status, body = envelope(["some output"])  # no rc line: the wrapper did not finish
    assert status["status"] == "failed" and body == ["some output"]


# --- the lab's stand-in nvidia-smi speaks the real formats --------------------------------------

RTX5090_GPUS = [
    {"name": "NVIDIA GeForce RTX 5090", "memory_mib": 32607, "compute_capability": "12.0",
     "pci_bus_id": "00000000:01:00.0"},
    {"name": "NVIDIA GeForce RTX 5090", "memory_mib": 32607, "compute_capability": "12.0",
     "pci_bus_id": "00000000:02:00.0"},
]
OPEN_580 = ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build  "
            "(dvs-builder@U22-I3-AF03-09-1)  Tue Sep 23 09:31:31 UTC 2025\nGCC version:  gcc version 12.3.0 "
            "(Ubuntu 12.3.0-1ubuntu1~22.04) \n")


@pytest.fixture
def lab_root(tmp_path):
    (tmp_path / "etc/gpufleet-lab").mkdir(parents=True)
    (tmp_path / "etc/gpufleet-lab/gpus.json").write_text(json.dumps(RTX5090_GPUS))
    (tmp_path / "run/gpufleet-lab/nvidia").mkdir(parents=True)
    (tmp_path / "run/gpufleet-lab/nvidia/version").write_text(OPEN_580)
    return tmp_path


def standin(root: Path, *args: str, hostname: str = "gpu-node-1") -> subprocess.CompletedProcess:
    env = {**os.environ, "GPUFLEET_LAB_ROOT": str(root), "GPUFLEET_LAB_HOSTNAME": hostname}
    return subprocess.run([sys.executable, str(STANDIN), *args], capture_output=True, text=True, env=env)


def test_standin_query_gpu_parses_as_real(lab_root):
    run = standin(lab_root, f"--query-gpu={gpu.QUERY_FIELDS}", "--format=csv,noheader")
    assert run.returncode == 0
    gpus = gpu.NvidiaGpus().process(run.stdout.splitlines() + [f"__gpufleet_rc={run.returncode}"])
    assert gpus["status"] == "ok" and gpus["count"] == 2
    assert {(g["name"], g["compute_capability"], g["memory_mib"], g["driver_version"]) for g in gpus["gpus"]} == {
        ("NVIDIA GeForce RTX 5090", "12.0", 32607, "580.95.05")}
    assert [g["pci_bus_id"] for g in gpus["gpus"]] == ["00000000:01:00.0", "00000000:02:00.0"]
    uuids = [g["uuid"] for g in gpus["gpus"]]
    assert len(set(uuids)) == 2 and all(len(u) == 40 and u.startswith("GPU-") for u in uuids)
    assert standin(lab_root, "-L").stdout.count("(UUID: GPU-") == 2
    again = gpu.parse_query_gpu(standin(lab_root, f"--query-gpu={gpu.QUERY_FIELDS}", "--format=csv").stdout.splitlines())
    assert [g["uuid"] for g in again] == uuids  # deterministic
    assert standin(lab_root, f"--query-gpu={gpu.QUERY_FIELDS}", "--format=csv,noheader",
                   hostname="gpu-node-2").stdout != run.stdout  # uuid depends on the host


def test_standin_csv_header_matches_real_tool(lab_root):
    fields = ("index,name,uuid,compute_cap,memory.total,memory.used,driver_version,pci.bus_id,"
              "temperature.gpu,utilization.gpu,power.draw")
    real_header = lines(H200 / "nvidia-smi-query-wide-csv.txt")[0]
    for fmt, unit in [("csv", " MiB"), ("csv,nounits", "")]:
        out = standin(lab_root, f"--query-gpu={fields}", f"--format={fmt}").stdout.splitlines()
        assert out[0] == real_header  # the real tool keeps units in the header even with nounits
        assert out[1].split(", ")[4] == f"32607{unit}"
    noheader = standin(lab_root, f"--query-gpu={fields}", "--format=csv,noheader,nounits").stdout.splitlines()
    assert len(noheader) == 2 and noheader[0].split(", ")[9:] == ["0", "11.50"]


def test_standin_topology_parses_as_pcie_without_nvlink(lab_root):
    run = standin(lab_root, "topo", "-m")
    topo = gpu.parse_topology(run.stdout.splitlines())
    assert topo["links"] == {"GPU0": {"GPU1": "PHB"}, "GPU1": {"GPU0": "PHB"}} and topo["nvlink"] is False
    # Same legend and layout as the real tool (captured on the H200s), apart from the link type.
    real = (H200 / "nvidia-smi-topo-m.txt").read_text()
    assert run.stdout.split("Legend:")[1] == real.split("Legend:")[1]
    assert run.stdout.splitlines()[0] == real.splitlines()[0]


def test_standin_table_is_byte_identical_to_real_h200(tmp_path):
    # Describe the captured H200s to the stand-in and its table must equal the capture, line for line.
    (tmp_path / "etc/gpufleet-lab").mkdir(parents=True)
    h200 = [{"name": "NVIDIA H200", "memory_mib": 143771, "compute_capability": "9.0", "pci_bus_id": bus,
             "memory_used_mib": 0, "temperature_c": temp, "power_w": power, "power_limit_w": 700, "fan": "N/A",
             "perf": "P0", "persistence": "On", "ecc": "0", "mig": "Disabled"}
            for bus, temp, power in [("00000000:00:06.0", 33, 80), ("00000000:00:07.0", 34, 79)]]
    (tmp_path / "etc/gpufleet-lab/gpus.json").write_text(json.dumps(h200))
    (tmp_path / "run/gpufleet-lab/nvidia").mkdir(parents=True)
    (tmp_path / "run/gpufleet-lab/nvidia/version").write_text((H200 / "proc-driver-nvidia-version.txt").read_text())
    assert standin(tmp_path).stdout.splitlines()[1:] == lines(H200 / "nvidia-smi.txt")[1:]
    assert standin(tmp_path, "--version").stdout == (H200 / "nvidia-smi-version.txt").read_text()


def test_standin_table_parses_as_rtx5090(lab_root):
    table = parse_smi_table(standin(lab_root).stdout.splitlines())
    assert (table["driver_version"], table["cuda_version"]) == ("580.95.05", "13.0")
    assert [(g["name"], g["memory_total_mib"]) for g in table["gpus"]] == [("NVIDIA GeForce RTX 5090", 32607)] * 2


def test_standin_without_driver_fails_like_the_real_tool(lab_root):
    (lab_root / "run/gpufleet-lab/nvidia/version").unlink()
    run = standin(lab_root, f"--query-gpu={gpu.QUERY_FIELDS}", "--format=csv,noheader")
    assert run.returncode == 9 and run.stdout.strip() == NO_DRIVER
    value = gpu.NvidiaGpus().process(run.stdout.splitlines() + [f"__gpufleet_rc={run.returncode}"])
    assert (value["status"], value["exit_code"], value["error"]) == ("failed", 9, NO_DRIVER)


def test_standin_bad_field_matches_real_error(lab_root):
    run = standin(lab_root, "--query-gpu=index,bogus_field", "--format=csv")
    assert run.returncode == 2 and run.stdout == (H200 / "nvidia-smi-query-bad-field.txt").read_text()


def test_load_driver_writes_the_package_version(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dpkg-query").write_text("#!/bin/sh\necho '1:580.95.05-1'\n")
    (bin_dir / "dpkg-query").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "GPUFLEET_LAB_ROOT": str(tmp_path),
           "GPUFLEET_LAB_KERNEL": "6.1.0-27-amd64"}
    (tmp_path / "lib/modules/6.1.0-27-amd64/build").mkdir(parents=True)  # the headers: DKMS builds the module
    subprocess.run(["sh", str(LOAD_DRIVER.parent / "dkms-build")], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["sh", str(LOAD_DRIVER)], check=True, env=env)
    version_file = tmp_path / "run/gpufleet-lab/nvidia/version"
    parsed = gpu.parse_driver_version(lines(version_file))
    assert (parsed["version"], parsed["flavor"]) == ("580.95.05", "open")
    subprocess.run(["sh", str(LOAD_DRIVER), "unload"], check=True, env=env)
    assert not version_file.exists()


def test_the_driver_reboot_marker_tells_a_reboot_that_happened_from_one_that_did_not():
    fact = gpu.DriverRebootMarker()
    assert fact.process([]) == {"marker": False, "rebooted_since": False}
    assert fact.process(["marker"]) == {"marker": True, "rebooted_since": True}  # /run twin gone: rebooted
    assert fact.process(["marker", "pending"]) == {"marker": True, "rebooted_since": False}  # never rebooted
    assert "/run/gpufleet-driver-reboot/580.95.05" in fact.command("580.95.05")
