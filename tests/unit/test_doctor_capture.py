"""Doctor's parsers and rules on a real capture: DoctorSnapshot's script and files/vllm_nccl_check.py run
on one NVIDIA H100 80GB HBM3 (tests/fixtures/gpu/h100-x1/doctor/README says how and when).

Every expected value is read here from the raw capture text (nvidia-smi's human table, ``nvidia-smi -L``,
the section's own CSV row, run.log), never taken from what the code under test returned.
"""

from __future__ import annotations

import hashlib
import json
import re

from gpufleet.doctor.evidence import declared
from gpufleet.doctor.rules import judge
from operations.facts import doctor
from operations.facts.util import MISSING, RC
from tests.unit.doctor_node import CONTAINER, GPU, HOST, fleet_node, snapshot_lines, text

CAP = GPU / "h100-x1/doctor"
NVIDIA_SMI = (CAP / "nvidia-smi.txt").read_text()
SMI_L = [re.match(r"GPU (\d+): (.+) \(UUID: (GPU-[0-9a-f-]+)\)$", line).groups()
         for line in text(CAP / "nvidia-smi-L.txt")]
RC_OF = dict(re.match(r"(\S+) rc=(\d+)", line).groups() for line in text(CAP / "rc.txt"))


def lines(name: str) -> list[str]:
    return text(CAP / name)


def raw_section(name: str, capture: str = "doctor-snapshot-idle.txt") -> list[str]:
    """A section's lines as the script printed them, cut here by hand (not by doctor.split_marked)."""
    out, inside = [], False
    for line in lines(capture):
        if line.startswith("__gpufleet_doctor="):
            inside = line == f"__gpufleet_doctor={name}"
        elif inside:
            out.append(line)
    return out


def csv_row(name: str, capture: str = "doctor-snapshot-idle.txt") -> list[str]:
    (row,) = [line for line in raw_section(name, capture) if line and not line.startswith("__gpufleet")]
    return [cell.strip() for cell in row.split(",")]


def table(pattern: str) -> str:
    return re.search(pattern, NVIDIA_SMI).group(1)


BUS_ID = r"\|\s+(0000[0-9A-Fa-f:.]+)\s"  # the table's Bus-Id column


def evidence(capture: str = "doctor-snapshot-idle.txt", **settings) -> dict:
    """The evidence gpufleet.doctor.evidence.read_node builds from the captured snapshot (no probes: no containers)."""
    ev = {"host": HOST, "declared": declared(fleet_node(**settings)),
          "read": {"complete": True, "errors": [], "round_trips": []}}
    ev.update(doctor.parse_snapshot(lines(capture)))
    ev["probes"] = {}
    return ev


def as_captured(**extra) -> dict:
    """Settings that declare the node as the capture shows it (read from nvidia-smi -L and the table)."""
    return {"gpu_count": len(SMI_L), "gpu_name": SMI_L[0][1], "gpu_compute_capability": csv_row("gpus")[3],
            "gpu_memory_gib": round(int(table(r"/\s*(\d+)MiB")) / 1024, 2), "vllm_tensor_parallel_size": 1, **extra}


def ids(ev: dict) -> set[str]:
    return {f.id for f in judge(ev).findings}


# ------------------------------------------------------------------------------- the capture -----
def test_the_capture_ran_cleanly_and_is_of_the_committed_script():
    assert RC_OF and set(RC_OF.values()) == {"0"}, RC_OF
    sha = re.search(r"sha256 ([0-9a-f]{64})", (CAP / "run.log").read_text()).group(1)
    assert hashlib.sha256((CAP / "snapshot.sh").read_bytes()).hexdigest() == sha
    # every section today's script prints is in the capture (a new section needs a new capture)
    want = re.findall(r"echo '__gpufleet_doctor=(\w+)'", doctor.snapshot_script())
    for capture in ("doctor-snapshot-idle.txt", "doctor-snapshot-busy.txt"):
        got = [line.partition("=")[2] for line in lines(capture) if line.startswith("__gpufleet_doctor=")]
        assert got == want
        assert doctor.parse_snapshot(lines(capture))["sections_read"] == sorted(want)


# ------------------------------------------------------------------------------- parsers ---------
def test_gpu_identity_parsed_from_the_real_query():
    ev = doctor.parse_snapshot(lines("doctor-snapshot-idle.txt"))
    assert ev["gpus"]["status"] == "ok"
    gpus = ev["gpus"]["gpus"]
    assert len(gpus) == ev["gpus"]["count"] == len(SMI_L) == 1
    (index, name, uuid), g = SMI_L[0], gpus[0]
    assert (g["index"], g["name"], g["uuid"]) == (int(index), name, uuid)
    assert name == table(r"\|\s+0\s+(NVIDIA \S.*?)\s{2,}")  # the table names it the same
    assert g["memory_mib"] == int(table(r"/\s*(\d+)MiB")) and isinstance(g["memory_mib"], int)
    assert g["driver_version"] == table(r"Driver Version:\s+(\S+)")
    assert g["pci_bus_id"] == table(BUS_ID)
    assert g["compute_capability"] == "9.0"  # Hopper


def test_driver_kernel_and_host_sections():
    ev = doctor.parse_snapshot(lines("doctor-snapshot-idle.txt"))
    assert ev["driver"]["loaded"] and ev["driver"]["version"] == table(r"Driver Version:\s+(\S+)")
    assert "Open Kernel Module" in raw_section("driver")[0] and ev["driver"]["flavor"] == "open"
    assert ev["modules"]["nvidia"] and not ev["modules"]["nouveau"]
    assert sorted(ev["modules"]["loaded"]) == sorted(line.split()[0] for line in raw_section("modules")
                                                     if line.startswith("nvidia"))
    (pkg,) = [line.split("\t") for line in raw_section("packages") if line.startswith("pkg\t")]
    assert ev["packages"][pkg[1]] == {"version": pkg[2], "held": pkg[3].startswith("h")}
    assert "nvidia-open" not in ev["packages"]  # the VM's driver is not a dpkg package
    assert raw_section("secure_boot")[0] == "__gpufleet_sb=noefi" and ev["secure_boot"]["state"] == "unsupported"
    assert ev["hostnames"] == sorted(set(raw_section("hostname")[:2]))
    # `nvidia-smi topo -m` underlines its header with ANSI escapes on this driver; one GPU, no links
    assert "\x1b[4m" in raw_section("topology")[0]
    assert ev["topology"]["gpus"] == ["GPU0"] and not ev["topology"]["nvlink"]
    for section, key in (("docker_info", "docker"), ("containers", "containers_status"), ("acs", "acs")):
        assert raw_section(section) == [MISSING] and ev[key]["status"] == "missing", section
    assert ev["containers"] == [] and ev["logs"] == {} and ev["units"] == {}
    assert ev["toolkit"] == {binary: None for binary in doctor.TOOLKIT_BINARIES}


def test_pcie_perf_and_throttle_idle_and_busy():
    for capture in ("doctor-snapshot-idle.txt", "doctor-snapshot-busy.txt"):
        ev = doctor.parse_snapshot(lines(capture))
        row = [int(cell) for cell in csv_row("pcie", capture)]
        (link,) = ev["pcie"]["gpus"]
        assert [link[k] for k in ("index", "gen_current", "gen_max", "width_current", "width_max")] == row
        assert all(isinstance(link[k], int) for k in link)
        index, pstate, util, used, temp, power, limit, mask = csv_row("gpu_perf", capture)
        (perf,) = ev["gpu_perf"]["gpus"]
        assert (perf["index"], perf["pstate"], perf["utilization"], perf["memory_used_mib"], perf["temperature_c"]) == (
            int(index), pstate, int(util), int(used), int(temp))
        assert (perf["power_w"], perf["power_limit_w"]) == (float(power), float(limit))
        assert perf["throttle_mask"] == mask and perf["throttle"] == []  # idle / SW power cap: no trouble
    idle, busy = csv_row("gpu_perf"), csv_row("gpu_perf", "doctor-snapshot-busy.txt")
    assert int(idle[7], 16) == 0x1, "nvml: clocksThrottleReasonGpuIdle"
    assert int(busy[7], 16) == 0x4 and float(busy[5]) > 0.95 * float(busy[6]), "SW power cap, at the power limit"
    assert int(busy[2]) > 90 and int(idle[2]) == 0
    # the real row with a hardware thermal slowdown bit added: the parser names it
    hot = ", ".join(busy[:7] + [f"0x{int(busy[7], 16) | 0x40:016x}"])
    assert doctor.parse_gpu_perf([hot])[0]["throttle"] == ["hardware thermal slowdown"]


def test_compute_apps_while_busy():
    assert raw_section("apps") == [f"{RC}0"]
    assert doctor.parse_snapshot(lines("doctor-snapshot-idle.txt"))["apps"]["apps"] == []
    uuid, pid, name, used = csv_row("apps", "doctor-snapshot-busy.txt")
    (app,) = doctor.parse_snapshot(lines("doctor-snapshot-busy.txt"))["apps"]["apps"]
    assert app == {"gpu_uuid": uuid, "pid": int(pid), "name": name, "used_mib": int(used)}
    assert isinstance(app["pid"], int) and isinstance(app["used_mib"], int)
    assert app["gpu_uuid"] == SMI_L[0][2] and name == "python3"


def test_the_nccl_check_report_from_a_real_cuda_torch():
    raw = json.loads((CAP / "vllm-nccl-check.txt").read_text())
    report = doctor.parse_check_report(["some warning first"] + lines("vllm-nccl-check.txt"))
    assert report["nccl_version"] == raw["nccl_version"] and re.fullmatch(r"2\.\d+\.\d+", report["nccl_version"])
    # ncclGetVersion of the loaded library agrees with the wheel's metadata (two sources in the check)
    assert report["nccl_version"] == raw["wheel_version"].split("+")[0]
    assert report["library"].endswith("nvidia/nccl/lib/libnccl.so.2")
    py, torch, cuda, available = re.search(r"^3\.\d+\.\d+ .*$", (CAP / "run.log").read_text(), re.M).group(0).split()
    assert (report["torch"], report["torch_cuda"], available) == (torch, cuda, "True")
    assert report["arch_source"] == "torch.cuda.get_arch_list()"  # the GPU was visible
    major, _, minor = csv_row("gpus")[3].partition(".")
    assert f"sm_{major}{minor}" == "sm_90" and "sm_90" in report["cuda_arch_list"]
    assert report["cuda_arch_list"] == raw["cuda_arch_list"]
    assert "problems" not in report and "ok" not in report


def probe_lines() -> list[str]:
    """What DoctorProbes' script prints for one running container, made of the host-side captures."""
    out = [f"{doctor.PROBE_MARK}{CONTAINER}"]
    for part, name in (("nccl", "vllm-nccl-check.txt"), ("smi", "nvidia-smi-L.txt"), ("shm", "df-shm.txt")):
        out += [f"{doctor.PART_MARK}{part}", *lines(name), f"{RC}{RC_OF[name]}"]
    return out


def test_probes_parse_the_captured_check_smi_and_shm():
    probe = doctor.parse_probes(probe_lines())[CONTAINER]
    assert probe["nccl"]["nccl_version"] == json.loads((CAP / "vllm-nccl-check.txt").read_text())["nccl_version"]
    assert probe["nccl_error"] is None
    assert probe["smi"]["ok"] and probe["smi"]["gpus"] == lines("nvidia-smi-L.txt")
    assert probe["shm_kib"] == int(lines("df-shm.txt")[-1].split()[1])


# ------------------------------------------------------------------------------- rules -----------
def test_rules_on_the_node_declared_as_captured():
    ev = evidence(**as_captured())
    # no Docker and no toolkit on that machine: both real; nothing about the GPU, driver, link or clocks
    assert ids(ev) == {"docker.down", "toolkit.missing"}
    assert [f.title for f in judge(ev).findings if f.id == "docker.down"] == ["Docker is not installed"]
    assert ids(evidence("doctor-snapshot-busy.txt", **as_captured())) == {"docker.down", "toolkit.missing"}


def test_rules_on_the_node_declared_with_more_gpus_than_it_has():
    declared_count = len(SMI_L) + 1  # the fleet's default node is a dual-GPU one
    ev = evidence(**as_captured(gpu_count=declared_count))
    (f,) = [f for f in judge(ev).findings if f.id == "gpu.missing"]
    assert f.title == f"{len(SMI_L)} of {declared_count} GPUs visible to the driver"
    assert f.evidence[0].value == f"{SMI_L[0][0]}:{table(BUS_ID)}"


def test_rules_judge_the_real_nccl_report_against_the_pin_and_the_real_gpu():
    # The captured host and check report on the fleet's (format fixture) TP=2 vLLM container: Docker sections
    # from tests/fixtures/doctor/node, everything read from the GPU and the driver from the capture.
    version = json.loads((CAP / "vllm-nccl-check.txt").read_text())["nccl_version"]

    def judged(pin: str, compute_capability: str | None = None) -> dict:
        real = doctor.parse_snapshot(lines("doctor-snapshot-idle.txt"))
        if compute_capability:
            real["gpus"]["gpus"][0]["compute_capability"] = compute_capability
        ev = {"host": HOST, "declared": declared(fleet_node(**as_captured(nccl_version=pin))),
              "read": {"complete": True, "errors": [], "round_trips": []}}
        ev.update(doctor.parse_snapshot(snapshot_lines()))
        ev.update({key: real[key] for key in ("gpus", "gpu_perf", "pcie", "apps", "driver", "modules", "topology",
                                              "packages")})
        ev["probes"] = doctor.parse_probes(probe_lines())
        return {f.id: f for f in judge(ev).findings}

    found = judged(version)
    # sm_90 is in the real torch's list; the fixture container was given GPUs 0,1, the real `nvidia-smi -L` shows 1
    assert set(found) == {"toolkit.gpus-lost-in-container"}
    assert found["toolkit.gpus-lost-in-container"].evidence[0].value == lines("nvidia-smi-L.txt")[0]
    found = judged("2.27.7")
    assert found["nccl.version-not-pinned"].title == f"{CONTAINER} loads NCCL {version}, the pin is 2.27.7"
    # the same report on a GPU whose architecture that torch lacks (CUDA 13 has no Volta, sm_70)
    assert "sm_70" not in json.loads((CAP / "vllm-nccl-check.txt").read_text())["cuda_arch_list"]
    assert "cuda.arch-missing" not in found and "cuda.arch-missing" in judged(version, "7.0")


def test_a_node_declared_as_the_fleets_rtx_5090_but_holding_the_captured_h100():
    # The fleet's default settings declare dual RTX 5090s; the real capture has an H100.
    ev = evidence(**as_captured(gpu_name="NVIDIA GeForce RTX 5090"))
    (f,) = [f for f in judge(ev).findings if f.id == "gpu.model-mismatch"]
    assert f.title == f"the GPUs are {SMI_L[0][1]}, the settings declare NVIDIA GeForce RTX 5090"
    assert "gpu.model-mismatch" not in ids(evidence(**as_captured()))
