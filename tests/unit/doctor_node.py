"""A healthy dual-RTX-5090 node for doctor's tests, built from tests/fixtures/doctor/ (see its README).

``snapshot_lines(**replace)`` is what DoctorSnapshot's script prints on that node (a section's
lines can be replaced to inject a fault at the source); ``healthy_evidence()`` is the evidence
dict gpufleet.doctor.evidence builds from it, through the real parsers. Rule tests change one
thing in it and judge.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from gpufleet.doctor.evidence import declared
from gpufleet.fleet import FleetHost
from gpufleet.settings import HostSettings
from operations.facts.doctor import LOG_MARK, PART_MARK, PROBE_MARK, SECTION, parse_probes, parse_snapshot
from operations.facts.util import RC

REPO = Path(__file__).resolve().parents[2]
NODE = REPO / "tests/fixtures/doctor/node"
LOGS = REPO / "tests/fixtures/doctor/logs"
GPU = REPO / "tests/fixtures/gpu"
FACTS = REPO / "tests/facts"
CONTAINER = "vllm-gpu-node-01-vllm-0"
HOST = "gpu-node-01"


def text(path: Path) -> list[str]:
    return path.read_text().splitlines()


def fact_output(case: str) -> list[str]:
    """The captured output lines of a tests/facts/<fact>/<case>.json fact case."""
    return json.loads((FACTS / case).read_text())["output"]


def acs_lines(redirect: bool) -> list[str]:
    lines = fact_output("pci.PcieAcs/acs_redirect_on_one_bridge.json")
    if not redirect:
        lines = [line.replace("ACSCtl:\tSrcValid+", "ACSCtl:\tSrcValid-").replace("ReqRedir+ CmpltRedir+ UpstreamFwd+ "
                 "EgressCtrl- DirectTrans-", "ReqRedir- CmpltRedir- UpstreamFwd- EgressCtrl- DirectTrans-")
                 if "ACSCtl" in line else line for line in lines]
    return lines


def ok(lines: list[str]) -> list[str]:
    return [*lines, f"{RC}0"]


def default_sections() -> dict[str, list[str]]:
    return {
        "hostname": [HOST, f"{HOST}.dc1.example.net", f"{RC}0"],
        "gpus": ok(text(NODE / "nvidia-smi-query-gpu.csv")),
        "gpu_perf": ok(text(NODE / "nvidia-smi-perf.csv")),
        "pcie": ok(text(NODE / "nvidia-smi-pcie.csv")),
        "apps": ok(text(NODE / "nvidia-smi-apps.csv")),
        "topology": ok(text(GPU / "rtx5090-x2-published/nvidia-smi-topo-m.txt")),
        "driver": ok(text(NODE / "proc-driver-nvidia-version.txt")),
        "modules": ok(["nvidia_uvm 2076672 0 - Live 0x0000000000000000 (PO)",
                       "nvidia_drm 135168 0 - Live 0x0000000000000000 (PO)",
                       "nvidia 11640832 2 nvidia_uvm, Live 0x0000000000000000 (PO)"]),
        "packages": ["pkg\tnvidia-open\t580.95.05-1\tii ", "pkg\tnvidia-container-toolkit\t1.17.8-1\tii ",
                     "pkg\tlibnccl2\t2.27.7-1+cuda12.9\tii ", "hold\tnvidia-open", "hold\tlibnccl2"],
        "reboot": ["none"],
        "secure_boot": ["__gpufleet_sb=mokutil", *text(NODE / "mokutil-sb-state.txt"), f"{RC}0"],
        "kernel_log": [],
        "acs": acs_lines(redirect=False),
        "docker_info": ok(text(NODE / "docker-info.txt")),
        "daemon_json": ok(text(NODE / "daemon.json")),
        "units": text(NODE / "systemctl-show.txt"),
        "toolkit": ["nvidia-container-runtime\t/usr/bin/nvidia-container-runtime", "nvidia-ctk\t/usr/bin/nvidia-ctk",
                    "nvidia-container-runtime-hook\t/usr/bin/nvidia-container-runtime-hook"],
        "containers": ok(text(NODE / "docker-inspect-vllm.json")),
        "logs": ok([f"{LOG_MARK}{CONTAINER}", *text(LOGS / "healthy.log")]),
    }


def snapshot_lines(**replace: list[str]) -> list[str]:
    """What the snapshot script prints on the node, sections replaced where given."""
    sections = {**default_sections(), **replace}
    out = ["Warning: Permanently added '10.40.1.11' (ED25519) to the list of known hosts."]  # noise before
    for name, lines in sections.items():
        out += [f"{SECTION}{name}", *lines]
    return out


def probe_lines(nccl: str = "vllm-nccl-check-gpu.json", running: bool = True) -> list[str]:
    out = [f"{PROBE_MARK}{CONTAINER}", f"{PART_MARK}nccl", *text(NODE / nccl), f"{RC}0"]
    if running:
        out += [f"{PART_MARK}smi", *text(NODE / "nvidia-smi-L-container.txt"), f"{RC}0",
                f"{PART_MARK}shm", *text(NODE / "df-shm.txt"), f"{RC}0"]
    return out


def fleet_node(**settings) -> FleetHost:
    """The node as the fleet declares it (group_data/gpu_nodes.py's hardware, the fleet's defaults)."""
    data = {"gpu_count": 2, "gpu_memory_gib": 31.84, "private_address": "10.40.1.11", **settings}
    return FleetHost(HOST, ["gpu_nodes", "prod"], HostSettings(**data), {"ssh_hostname": "10.40.1.11", **data})


_HEALTHY: dict | None = None


def healthy_evidence() -> dict:
    """The evidence of the healthy node (a fresh deep copy each call)."""
    global _HEALTHY
    if _HEALTHY is None:
        ev = {"host": HOST, "declared": declared(fleet_node()),
              "read": {"complete": True, "errors": [], "round_trips": []}}
        ev.update(parse_snapshot(snapshot_lines()))
        ev["probes"] = parse_probes(probe_lines())
        _HEALTHY = ev
    return copy.deepcopy(_HEALTHY)


def container(ev: dict) -> dict:
    return ev["containers"][0]
