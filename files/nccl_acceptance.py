#!/usr/bin/env python3
"""NCCL acceptance test: an all-reduce across this node's GPUs, checked, measured and judged.

Run inside the node's vLLM image, so that it uses the NCCL vLLM loads (torch's, which is the
nvidia-nccl wheel pinned by files/Dockerfile.vllm_rtx5090). `gpufleet verify --nccl` uploads this
file and runs, with the serving containers' NCCL environment and /dev/shm size:

    docker run --rm --gpus all --shm-size 16g [-e NCCL_...] \
        -v /tmp/x.py:/opt/gpufleet/nccl_acceptance.py:ro --entrypoint python3 IMAGE \
        /opt/gpufleet/nccl_acceptance.py --json --world-size 2

1. One process per GPU (multiprocessing "spawn", rendezvous over TCP on 127.0.0.1; no torchrun),
   torch.distributed with NCCL -- or gloo on CPU (`--backend gloo --world-size N`), the same code
   path, which CI runs.
2. For each size from --min-bytes to --max-bytes (1 MiB .. 1 GiB, doubling): every rank fills a
   float32 buffer with a pattern of small integers, one all-reduce (sum) is compared element by
   element with the exact expected sum (#wrong, as nccl-tests counts it); then --iters all-reduces
   are timed after --warmup. time = the slowest rank's mean.
3. algbw = bytes / time, busbw = algbw * 2(n-1)/n, in GB/s of 1e9 bytes: nccl-tests' definitions
   (NVIDIA/nccl-tests doc/PERFORMANCE.md), so the numbers compare with all_reduce_perf's.
4. The topology (`nvidia-smi topo -m`, `topo -p2p r`, PCIe link generation and width; NVML through
   pynvml when nvidia-smi is missing) and the NCCL variables pick the expectation (EXPECTATIONS:
   NVLink, PCIe with P2P, or host memory when there is no P2P, as between GeForce cards); busbw at
   the largest size (at least 64 MiB) must reach its floor.
5. When it fails, it names the causes it can see: the transport NCCL used (P2P/SHM/NET, parsed from
   NCCL_DEBUG=INFO, which is set for this test's processes only and written to a temporary file;
   never set it in serving), PCIe link width, NCCL variables that change the transport, NCCL's own
   warnings, and a hang (the classic symptom of PCIe ACS redirecting P2P traffic).

Output: a table like all_reduce_perf's, or `--json` (one object; `--save FILE` writes it too).
Exit 0 pass, 2 below the expectation or a wrong sum, 1 could not run (or could not judge).
Needs torch; nothing else outside the standard library.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import queue as queue_mod
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from itertools import combinations

MIB = 1 << 20
GB = 1e9  # nccl-tests' GB/s
JUDGE_MIN_BYTES = 64 * MIB  # below this, latency dominates: bandwidth is not judged
CHUNK = 16 * MIB  # elements per step when filling and checking (bounds temporary memory)
PATTERN = 61  # rank r, element i holds (i + 7r) % 61: small integers, exact in float32 sums

# ------------------------------------------------------------------------- expectations ----
# Per-lane PCIe payload rate per direction in GB/s (line rate x encoding: 8b/10b for Gen1-2,
# 128b/130b for Gen3-5, FLIT for Gen6; PCI-SIG base specifications). Gen5 x16 = 63 GB/s.
PCIE_LANE_GBPS = {1: 0.25, 2: 0.5, 3: 0.985, 4: 1.969, 5: 3.938, 6: 7.563}
# NVLink rate per link per direction, GB/s, by compute capability major: NVLink 2 (V100, 6 links,
# 300 GB/s both directions), 3 (A100, 12 links, 600 GB/s), 4 (H100/H200, 18 links, 900 GB/s),
# 5 (B200, 18 links, 1.8 TB/s), per NVIDIA's datasheets.
NVLINK_LINK_GBPS = {7: 25.0, 8: 25.0, 9: 25.0, 10: 50.0}

EXPECTATIONS: dict[str, dict] = {
    "nvlink": {
        "applies": "every pair of GPUs joined by NVLink (topo -m NV#) and P2P not disabled",
        "transport": "P2P",
        "bound": "NV# links x the per-link rate per direction (NVLINK_LINK_GBPS)",
        "floor_fraction": 0.6,
        "sources": [
            "NVIDIA H100/H200 datasheets: NVLink 900 GB/s over 18 links, both directions = 25 GB/s "
            "per link per direction (450 GB/s for NV18)",
            "gpufleet issue 15: 2x H200 NV18 measured about 328 GB/s busbw at 1 GiB (0.73 of 450)",
        ],
    },
    "pcie_p2p": {
        "applies": "no NVLink, P2P OK between every pair (topo -p2p r), P2P not disabled",
        "transport": "P2P",
        "bound": "the narrowest GPU's PCIe link per direction (lanes x PCIE_LANE_GBPS)",
        "floor_fraction": 0.6,
        "sources": [
            "PCI-SIG: Gen5 x16 = 32 GT/s x 16 lanes x 128/130 = 63 GB/s per direction",
            "voipmonitor/rtx6kpro hardware/pcie-bandwidth.md: P2P writes 54-56 GB/s on Gen5 x16 "
            "(RTX PRO 6000 and RTX 5090 with a P2P-enabled driver), about 89% of 63 GB/s",
        ],
    },
    "host_memory": {
        "applies": "no P2P (topo -p2p r not OK: GeForce cards report GNS), or NCCL_P2P_DISABLE=1 / "
                   "NCCL_P2P_LEVEL=LOC: NCCL copies through pinned host memory (SHM transport)",
        "transport": "SHM",
        "bound": "the narrowest GPU's PCIe link per direction; every byte also crosses host memory "
                 "twice each way, which on desktop and workstation boards is the real limit",
        "floor_fraction": 0.3,
        "sources": [
            "NVIDIA/nccl#1309 (NCCL maintainer): GeForce cards have no GPU Direct P2P, traffic goes "
            "back through the CPU",
            "NVIDIA/nccl#1639: 8x RTX 5090 busbw 28 GB/s, 4x 35 GB/s (Gen5, ACS off); maintainer: on "
            "PCI systems the bandwidth the CPU and memory deliver decides",
            "gpufleet issue 15: 2x H200 with NCCL_P2P_DISABLE=1 about 28 GB/s at 1 GiB "
            "(0.44 of a Gen5 x16 link); the floor 0.3 leaves room for dual-channel desktop memory",
        ],
    },
    "single_gpu": {
        "applies": "world size 1: no traffic between GPUs; busbw is 0 by definition",
        "transport": None, "bound": None, "floor_fraction": None,
        "sources": ["NVIDIA/nccl-tests doc/PERFORMANCE.md: all-reduce busbw = algbw * 2(n-1)/n"],
    },
    "cpu": {
        "applies": "gloo on CPU: checks the code path and the sums; no bandwidth expectation",
        "transport": None, "bound": None, "floor_fraction": None, "sources": [],
    },
}

# NCCL variables worth naming when the result is low: they choose or disable transports and tuning.
NCCL_TRANSPORT_VARS = ("NCCL_P2P_DISABLE", "NCCL_P2P_LEVEL", "NCCL_SHM_DISABLE", "NCCL_CUMEM_ENABLE",
                       "NCCL_ALGO", "NCCL_PROTO", "NCCL_MIN_NCHANNELS", "NCCL_MAX_NCHANNELS",
                       "NCCL_NCHANNELS_PER_PEER", "NCCL_BUFFSIZE", "NCCL_NVLS_ENABLE", "NCCL_IB_DISABLE",
                       "NCCL_NET_GDR_LEVEL")
DEBUG_VARS = ("NCCL_DEBUG", "NCCL_DEBUG_FILE", "NCCL_DEBUG_SUBSYS")
NOT_SETTINGS = ("NCCL_VERSION",)  # a label NVIDIA's CUDA images set; not the NCCL that is loaded


# ------------------------------------------------------------------------------ parsing ----
def parse_size(text: str) -> int:
    """'1MiB', '4M', '1GiB', '1G', '65536' -> bytes (K/M/G are powers of 1024, as in nccl-tests)."""
    m = re.fullmatch(r"\s*(\d+)\s*([kmg]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1MiB, 4M, 1GiB)")
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2).lower()]


def sizes_between(low: int, high: int) -> list[int]:
    out, size = [], low
    while size <= high:
        out.append(size)
        size *= 2
    return out


def _clean(line: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", line).rstrip()


def _matrix(text: str) -> dict[str, dict[str, str]]:
    """A device matrix as nvidia-smi prints it (topo -m, topo -p2p r): {row: {column: cell}}."""
    header: list[str] | None = None
    rows: dict[str, dict[str, str]] = {}
    for line in map(_clean, text.splitlines()):
        tokens = line.split()
        if header is None:
            if tokens and re.fullmatch(r"(GPU|NIC)\d+", tokens[0]) and line[:1].isspace():
                header = [t for t in tokens if re.fullmatch(r"(GPU|NIC)\d+", t)]
            continue
        if not tokens or not re.fullmatch(r"(GPU|NIC)\d+", tokens[0]):
            break
        rows[tokens[0]] = {dev: tokens[1 + i] for i, dev in enumerate(header)
                           if 1 + i < len(tokens) and dev != tokens[0]}
    return rows


def parse_topo_m(text: str) -> dict[str, dict[str, str]]:
    """`nvidia-smi topo -m` -> {"GPU0": {"GPU1": "NV18"}, ...} (GPUs only)."""
    return {a: {b: v for b, v in row.items() if b.startswith("GPU")}
            for a, row in _matrix(text).items() if a.startswith("GPU")}


def parse_p2p(text: str) -> dict[str, dict[str, str]]:
    """`nvidia-smi topo -p2p r` (or rw, w, n, a) -> {"GPU0": {"GPU1": "OK" | "GNS" | ...}}."""
    return parse_topo_m(text)


def parse_pcie_query(text: str) -> list[dict]:
    """`nvidia-smi --query-gpu=index,name,compute_cap,pcie.link.gen.current,pcie.link.gen.max,
    pcie.link.width.current,pcie.link.width.max --format=csv,noheader,nounits`."""
    def num(v: str) -> int | float | None:
        try:
            return float(v) if "." in v else int(v)
        except ValueError:
            return None

    gpus = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 7 or not cells[0].isdigit():
            continue
        gpus.append({"index": int(cells[0]), "name": cells[1], "compute_cap": num(cells[2]),
                     "gen_current": num(cells[3]), "gen_max": num(cells[4]),
                     "width_current": num(cells[5]), "width_max": num(cells[6])})
    return gpus


_CHANNEL = re.compile(r"Channel\s+\d+(?:/\d+)?\s*:\s*\d+\[[^\]]*\]\s*->\s*\d+\[[^\]]*\](?:\s*\[\w+\])?\s+via\s+"
                      r"(\S+(?: pointer)?)")
_VERSION = re.compile(r"NCCL version (\S+)")


def parse_nccl_log(text: str) -> dict:
    """What NCCL_DEBUG=INFO says about the run: transports per channel connection, version, warnings.

    >>> parse_nccl_log("h:1:2 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/CUMEM/read")["transports"]
    {'P2P': 1}
    """
    transports: dict[str, int] = {}
    details: set[str] = set()
    version = None
    warnings: list[str] = []
    for line in text.splitlines():
        m = _CHANNEL.search(line)
        if m:
            kind = m.group(1).split("/")[0]
            transports[kind] = transports.get(kind, 0) + 1
            details.add(m.group(1))
            continue
        v = _VERSION.search(line)
        if v and version is None:
            version = v.group(1)
        if " NCCL WARN " in line and len(warnings) < 5:
            warnings.append(line.split(" NCCL WARN ", 1)[1].strip())
    return {"transports": transports, "details": sorted(details), "version": version, "warnings": warnings}


# --------------------------------------------------------------------------- topology ----
def _run(cmd: list[str], timeout: int = 30) -> tuple[int | None, str]:
    if shutil.which(cmd[0]) is None:
        return None, f"{cmd[0]}: not found"
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout + p.stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, str(exc)


def read_topology() -> dict:
    """The GPUs' links as nvidia-smi reports them, or NVML when nvidia-smi is missing."""
    topo: dict = {"source": None, "links": {}, "p2p": {}, "pcie": [], "raw": {}, "errors": []}
    rc, text = _run(["nvidia-smi", "topo", "-m"])
    if rc is None:
        topo["errors"].append(text)
        return read_topology_nvml(topo)
    topo["source"] = "nvidia-smi"
    topo["raw"]["topo_m"] = text
    topo["links"] = parse_topo_m(text) if rc == 0 else {}
    rc, text = _run(["nvidia-smi", "topo", "-p2p", "r"])
    topo["raw"]["topo_p2p_r"] = text
    topo["p2p"] = parse_p2p(text) if rc == 0 else {}
    rc, text = _run(["nvidia-smi", "--query-gpu=index,name,compute_cap,pcie.link.gen.current,pcie.link.gen.max,"
                     "pcie.link.width.current,pcie.link.width.max", "--format=csv,noheader,nounits"])
    topo["raw"]["query_pcie"] = text
    topo["pcie"] = parse_pcie_query(text) if rc == 0 else []
    return topo


def read_topology_nvml(topo: dict) -> dict:
    try:
        import pynvml as nv
    except ImportError:
        topo["errors"].append("pynvml is not installed")
        return topo
    try:
        nv.nvmlInit()
        handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(nv.nvmlDeviceGetCount())]
        topo["source"] = "nvml"
        for i, h in enumerate(handles):
            name = nv.nvmlDeviceGetName(h)
            cap = nv.nvmlDeviceGetCudaComputeCapability(h)
            topo["pcie"].append({
                "index": i, "name": name.decode() if isinstance(name, bytes) else name,
                "compute_cap": float(f"{cap[0]}.{cap[1]}"),
                "gen_current": nv.nvmlDeviceGetCurrPcieLinkGeneration(h),
                "gen_max": nv.nvmlDeviceGetMaxPcieLinkGeneration(h),
                "width_current": nv.nvmlDeviceGetCurrPcieLinkWidth(h),
                "width_max": nv.nvmlDeviceGetMaxPcieLinkWidth(h)})
        for (i, a), (j, b) in combinations(enumerate(handles), 2):
            status = nv.nvmlDeviceGetP2PStatus(a, b, nv.NVML_P2P_CAPS_INDEX_READ)
            word = "OK" if status == nv.NVML_P2P_STATUS_OK else f"NVML_P2P_STATUS_{status}"
            links = 0
            for link in range(nv.NVML_NVLINK_MAX_LINKS):
                try:  # an NVLink whose remote end is GPU j
                    if nv.nvmlDeviceGetNvLinkState(a, link) and \
                            nv.nvmlDeviceGetNvLinkRemotePciInfo_v2(a, link).busId == nv.nvmlDeviceGetPciInfo(b).busId:
                        links += 1
                except nv.NVMLError:
                    break
            kind = f"NV{links}" if links else "PCIe"
            topo["p2p"].setdefault(f"GPU{i}", {})[f"GPU{j}"] = word
            topo["p2p"].setdefault(f"GPU{j}", {})[f"GPU{i}"] = word
            topo["links"].setdefault(f"GPU{i}", {})[f"GPU{j}"] = kind
            topo["links"].setdefault(f"GPU{j}", {})[f"GPU{i}"] = kind
    except Exception as exc:  # noqa: BLE001 - NVML errors are reported, the test still runs
        topo["errors"].append(f"NVML: {exc}")
    return topo


def visible_gpus(world_size: int, env: dict[str, str]) -> list[int]:
    """nvidia-smi indexes of the GPUs the ranks use (CUDA_VISIBLE_DEVICES, in PCI bus order)."""
    cvd = env.get("CUDA_VISIBLE_DEVICES", "")
    ids = [int(x) for x in cvd.split(",") if x.strip().isdigit()] if cvd else []
    return (ids or list(range(world_size)))[:world_size]


# ---------------------------------------------------------------------------- judging ----
def p2p_disabled_by(env: dict[str, str]) -> str | None:
    if env.get("NCCL_P2P_DISABLE", "0").strip() not in ("", "0"):
        return f"NCCL_P2P_DISABLE={env['NCCL_P2P_DISABLE']}"
    if env.get("NCCL_P2P_LEVEL", "").strip().upper() in ("LOC", "0"):
        return f"NCCL_P2P_LEVEL={env['NCCL_P2P_LEVEL']}"
    return None


def classify(backend: str, world_size: int, gpus: list[int], topology: dict, env: dict) -> tuple[str, list[str]]:
    """Which expectation applies, and why."""
    if backend != "nccl":
        return "cpu", [f"{backend} backend on CPU"]
    if world_size <= 1:
        return "single_gpu", ["one rank" if world_size == 1 else "no ranks"]
    pairs = [(f"GPU{a}", f"GPU{b}") for a, b in combinations(gpus, 2)]
    disabled = p2p_disabled_by(env)
    if disabled:
        return "host_memory", [f"{disabled} in the environment"]
    links = [topology.get("links", {}).get(a, {}).get(b) for a, b in pairs]
    if links and all(link and link.startswith("NV") for link in links):
        return "nvlink", [f"{a}-{b} {link}" for (a, b), link in zip(pairs, links)]
    p2p = [topology.get("p2p", {}).get(a, {}).get(b) for a, b in pairs]
    why = [f"{a}-{b} {link or '?'}, P2P {s or 'unknown'}" for (a, b), link, s in zip(pairs, links, p2p)]
    if p2p and all(s == "OK" for s in p2p):
        return "pcie_p2p", why
    if any(s is None for s in p2p):
        why.append("P2P status unknown: judged against the lower, host-memory floor")
    return "host_memory", why


def bound_for(cls: str, gpus: list[int], topology: dict) -> tuple[float | None, str]:
    """The bandwidth bound (busbw, GB/s) of a class on these GPUs, and how it was computed."""
    pcie = {g["index"]: g for g in topology.get("pcie", [])}
    if not gpus:
        return None, "no GPUs"
    if cls == "nvlink":
        counts = [int(re.sub(r"\D", "", topology["links"][f"GPU{a}"][f"GPU{b}"]) or 0)
                  for a, b in combinations(gpus, 2)]
        cap = (pcie.get(gpus[0]) or {}).get("compute_cap")
        per_link = NVLINK_LINK_GBPS.get(int(cap) if cap else 9, 25.0)
        return min(counts) * per_link, f"NV{min(counts)} x {per_link:g} GB/s per link per direction"
    if cls in ("pcie_p2p", "host_memory"):
        widths = []
        for g in gpus:
            info = pcie.get(g) or {}
            gen, width = info.get("gen_max"), info.get("width_current") or info.get("width_max")
            if not gen or not width or int(gen) not in PCIE_LANE_GBPS:
                return None, f"PCIe link of GPU{g} unknown"
            widths.append((PCIE_LANE_GBPS[int(gen)] * int(width), f"GPU{g} Gen{int(gen)} x{int(width)}"))
        rate, what = min(widths)
        return rate, f"{what}: {rate:.1f} GB/s per direction"
    return None, "no bandwidth bound"


def causes_seen(cls: str, gpus: list[int], topology: dict, env: dict, nccl_log: dict) -> list[str]:
    """What this process can see that explains a low or wrong result (the host adds ACS)."""
    causes = []
    expected = EXPECTATIONS[cls]["transport"]
    seen = set(nccl_log.get("transports") or {})
    if expected and seen and expected not in seen:
        how = ", ".join(nccl_log.get("details") or sorted(seen))
        if expected == "P2P" and "SHM" in seen:
            causes.append(f"transport: NCCL connected the GPUs via {how}, not P2P: P2P was refused (PCIe ACS "
                          "redirect or IOMMU on the path, NCCL_P2P_LEVEL) and traffic went through host memory")
        else:
            causes.append(f"transport: NCCL connected the GPUs via {how}, expected {expected}")
    if "NET" in seen:
        causes.append("transport: NCCL fell back to its network transport between GPUs of one host: no usable "
                      "/dev/shm (give the container --shm-size or --ipc=host) or NCCL_SHM_DISABLE=1")
    pcie = {g["index"]: g for g in topology.get("pcie", [])}
    for g in gpus:
        info = pcie.get(g) or {}
        cur, top = info.get("width_current"), info.get("width_max")
        if cur and top and cur < top:
            causes.append(f"link width: GPU{g} PCIe link runs x{cur} of x{top}: reseat the card, check the slot's "
                          "wiring and the BIOS lane split (bifurcation)")
    for var in NCCL_TRANSPORT_VARS:
        if var in env:
            causes.append(f"environment: {var}={env[var]} changes NCCL's transport or tuning")
    for warning in nccl_log.get("warnings") or []:
        causes.append(f"NCCL warning: {warning}")
        if "shm" in warning.lower() or "shared memory" in warning.lower():
            causes.append("/dev/shm: NCCL could not create its shared-memory segment: raise --shm-size")
    return causes


def judge(report: dict) -> dict:
    """The verdict on a report (inputs recorded in it); a pure function, so fixtures can be re-judged."""
    backend, n = report["backend"], report["world_size"]
    topology, env = report.get("topology") or {}, report.get("env") or {}
    gpus = report.get("gpus") or list(range(n))
    nccl_log = report.get("nccl_log") or {}
    results = report.get("results") or []
    cls, why = classify(backend, n, gpus, topology, env)
    exp = EXPECTATIONS[cls]
    bound, basis = bound_for(cls, gpus, topology)
    floor = report.get("floor_override_gbps") if exp["floor_fraction"] is not None else None
    if floor is None and bound is not None:
        floor = round(exp["floor_fraction"] * bound, 2)
    verdict: dict = {"class": cls, "why": why, "expected_transport": exp["transport"], "bound_gbps": bound,
                     "bound_basis": basis, "floor_fraction": exp["floor_fraction"], "floor_gbps": floor,
                     "sources": exp["sources"], "judged_bytes": None, "busbw_gbps": None, "problems": [],
                     "causes": [], "notes": []}
    if report.get("run_errors"):
        verdict["problems"] += report["run_errors"]
        verdict["causes"] = causes_seen(cls, gpus, topology, env, nccl_log)
        if report.get("timed_out"):
            verdict["causes"].append("hang: no completion in time; NCCL P2P over PCIe hangs when ACS redirects P2P "
                                     "traffic (check ACS, or NCCL_P2P_DISABLE=1 to confirm)")
        verdict["status"] = "error"
        return verdict
    wrong = [r for r in results if r["wrong"]]
    if wrong:
        verdict["problems"].append("wrong sum: " + ", ".join(f"{r['wrong']} elements at {r['bytes']} B" for r in wrong))
        verdict["causes"] = causes_seen(cls, gpus, topology, env, nccl_log) + [
            "data corruption between GPUs: look for PCIe AER errors (dmesg), ACS/IOMMU on the P2P path, risers"]
    if not results:
        verdict["problems"].append("no results")
        verdict["status"] = "error"
        return verdict
    last = results[-1]
    verdict["judged_bytes"], verdict["busbw_gbps"] = last["bytes"], last["busbw_gbps"]
    if floor is None:
        if cls in ("single_gpu", "cpu"):
            verdict["notes"].append(f"{exp['applies']}; only the sums are judged")
            if cls == "single_gpu":
                verdict["notes"].append("algbw with one rank times NCCL's in-place no-op, not a link")
            verdict["status"] = "fail" if wrong else "pass"
        else:
            verdict["notes"].append(f"bandwidth not judged: {basis}")
            verdict["status"] = "fail" if wrong else "unjudged"
        return verdict
    if last["bytes"] < JUDGE_MIN_BYTES:
        verdict["notes"].append(f"bandwidth not judged: the largest size {last['bytes']} B is below "
                                f"{JUDGE_MIN_BYTES} B")
        verdict["status"] = "fail" if wrong else "unjudged"
        return verdict
    if last["busbw_gbps"] < floor:
        verdict["problems"].append(f"busbw {last['busbw_gbps']:.1f} GB/s at {last['bytes']} B is below the floor "
                                   f"{floor:.1f} GB/s ({cls}: {basis})")
        if not wrong:
            verdict["causes"] = causes_seen(cls, gpus, topology, env, nccl_log)
        if not verdict["causes"]:
            verdict["causes"].append("none visible from inside the container: check ACS, power and thermal "
                                     "throttling, and other work on the GPUs")
    verdict["status"] = "fail" if verdict["problems"] else "pass"
    return verdict


EXIT = {"pass": 0, "fail": 2, "unjudged": 1, "error": 1}


# ----------------------------------------------------------------------------- workers ----
def _pattern(torch, start: int, end: int, rank: int, device):
    idx = torch.arange(start, end, dtype=torch.int32, device=device)
    return ((idx + 7 * rank) % PATTERN).to(torch.float32)


def _expected(torch, start: int, end: int, world: int, device):
    idx = torch.arange(start, end, dtype=torch.int32, device=device)
    total = torch.zeros(end - start, dtype=torch.float32, device=device)
    for r in range(world):
        total += ((idx + 7 * r) % PATTERN).to(torch.float32)
    return total


def worker(rank: int, cfg: dict, out) -> None:
    """One rank: init, then for each size check one all-reduce and time the rest."""
    try:
        from datetime import timedelta

        import torch
        import torch.distributed as dist

        n, nccl = cfg["world_size"], cfg["backend"] == "nccl"
        if nccl:
            torch.cuda.set_device(rank)
            device = torch.device("cuda", rank)
        else:
            device = torch.device("cpu")

        def sync():
            if nccl:
                torch.cuda.synchronize(device)

        dist.init_process_group(cfg["backend"], init_method=f"tcp://127.0.0.1:{cfg['port']}", rank=rank,
                                world_size=n, timeout=timedelta(seconds=cfg["timeout"]))
        info = {"rank": rank, "torch": torch.__version__, "torch_cuda": torch.version.cuda, "nccl_torch": None,
                "device": str(device)}
        if torch.cuda.is_available():
            try:
                v = torch.cuda.nccl.version()  # (2, 27, 7); an int such as 2708 in old torch
                info["nccl_torch"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
            except Exception:  # noqa: BLE001 - a torch built without NCCL
                pass
        if nccl:
            info["device_name"] = torch.cuda.get_device_name(device)
        results = []
        for size in cfg["sizes"]:
            count = size // 4
            buf = torch.empty(count, dtype=torch.float32, device=device)
            for start in range(0, count, CHUNK):
                buf[start:start + CHUNK] = _pattern(torch, start, min(count, start + CHUNK), rank, device)
            if cfg["inject_fault"] and rank == n - 1:
                buf[count // 2] += 1  # a fault the check must catch (tests)
            dist.all_reduce(buf)
            sync()
            wrong = 0
            for start in range(0, count, CHUNK):
                end = min(count, start + CHUNK)
                wrong += int((buf[start:end] != _expected(torch, start, end, n, device)).sum().item())
            for _ in range(cfg["warmup"]):
                dist.all_reduce(buf)
            sync()
            dist.all_reduce(torch.zeros(1, device=device))  # line the ranks up before the clock starts
            sync()
            t0 = time.perf_counter()
            for _ in range(cfg["iters"]):
                dist.all_reduce(buf)
            sync()
            results.append({"bytes": size, "seconds": (time.perf_counter() - t0) / cfg["iters"], "wrong": wrong})
            del buf
        dist.destroy_process_group()
        out.put(("ok", rank, info, results))
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
        out.put(("error", rank, f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=4)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(cfg: dict, wall_timeout: float) -> tuple[list, list[str], bool]:
    """Start one process per rank; collect (per-rank messages, errors, timed out)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, cfg, out), daemon=True) for r in range(cfg["world_size"])]
    for p in procs:
        p.start()
    messages, errors, deadline, timed_out = [], [], time.monotonic() + wall_timeout, False
    while len(messages) < len(procs):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            errors.append(f"timed out after {wall_timeout:.0f} s with {len(messages)} of {len(procs)} ranks done")
            break
        try:
            msg = out.get(timeout=min(remaining, 1.0))
        except queue_mod.Empty:
            dead = [p for p in procs if not p.is_alive() and p.exitcode not in (0, None)]
            if dead and not any(m[0] == "error" for m in messages):
                errors.append(f"rank process exited {dead[0].exitcode} without a report")
                break
            continue
        messages.append(msg)
        if msg[0] == "error":
            errors.append(f"rank {msg[1]}: {msg[2]}")
            deadline = min(deadline, time.monotonic() + 10)  # the others are stuck in a collective
    for p in procs:
        p.join(timeout=5 if not errors else 1)
        if p.is_alive():
            p.terminate()
            p.join(timeout=5)
    return messages, errors, timed_out


# -------------------------------------------------------------------------------- main ----
def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        return 0


def run(args) -> dict:
    backend = args.backend
    n = args.world_size or (gpu_count() if backend == "nccl" else 2)
    env = {k: v for k, v in os.environ.items()
           if (k.startswith("NCCL_") and k not in DEBUG_VARS + NOT_SETTINGS) or k == "CUDA_VISIBLE_DEVICES"}
    report: dict = {"tool": "gpufleet nccl_acceptance", "schema": 1, "backend": backend, "world_size": n,
                    "op": "all_reduce sum float32", "iters": args.iters, "warmup": args.warmup,
                    "host": socket.gethostname(), "python": platform.python_version(), "env": env,
                    "gpus": visible_gpus(n, env) if backend == "nccl" else [], "topology": {},
                    "floor_override_gbps": args.floor_gbps, "versions": {}, "nccl_version": None, "nccl_log": {},
                    "results": [], "run_errors": [], "timed_out": False}
    if n < 1:
        report["run_errors"].append("no GPUs visible to torch (is this a CUDA image run with --gpus all?)"
                                    if backend == "nccl" else "world size must be at least 1")
    if backend == "nccl":
        report["topology"] = read_topology()
    sizes = sizes_between(args.min_bytes, args.max_bytes)
    if not sizes:
        report["run_errors"].append(f"no sizes between {args.min_bytes} and {args.max_bytes}")
    if report["run_errors"]:
        report["verdict"] = judge(report)
        return report

    saved = {k: os.environ.get(k) for k in (*DEBUG_VARS, "CUDA_DEVICE_ORDER", "GLOO_SOCKET_IFNAME")}
    logdir = tempfile.mkdtemp(prefix="nccl-acceptance-")
    try:
        if backend == "nccl":
            os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # rank r = nvidia-smi's GPU r
            if args.transport:  # this test's processes only; the variables are put back below
                os.environ.update(NCCL_DEBUG="INFO", NCCL_DEBUG_FILE=os.path.join(logdir, "nccl.%h.%p.log"))
                os.environ.pop("NCCL_DEBUG_SUBSYS", None)
        else:
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        cfg = {"backend": backend, "world_size": n, "sizes": sizes, "iters": args.iters, "warmup": args.warmup,
               "port": free_port(), "timeout": int(args.timeout), "inject_fault": args.inject_fault}
        messages, errors, timed_out = run_ranks(cfg, args.timeout)
        log_text = ""
        for path in sorted(glob.glob(os.path.join(logdir, "nccl.*.log"))):
            with open(path, errors="replace") as f:
                log_text += f.read()
        if log_text:
            report["nccl_log"] = parse_nccl_log(log_text)
            if args.nccl_log:
                with open(args.nccl_log, "w") as f:
                    f.write(log_text)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(logdir, ignore_errors=True)

    report["run_errors"], report["timed_out"] = errors, timed_out
    oks = sorted((m for m in messages if m[0] == "ok"), key=lambda m: m[1])
    if oks:
        info = oks[0][2]
        report["versions"] = {k: info.get(k) for k in ("torch", "torch_cuda", "nccl_torch")}
        report["devices"] = [m[2].get("device_name") or m[2]["device"] for m in oks]
    report["nccl_version"] = ((report["nccl_log"].get("version") or "").split("+")[0]
                              or report["versions"].get("nccl_torch"))
    if len(oks) == n and not errors:
        factor = 2 * (n - 1) / n
        for i, size in enumerate(sizes):
            seconds = max(m[3][i]["seconds"] for m in oks)
            algbw = size / seconds / GB
            report["results"].append({"bytes": size, "count": size // 4, "time_us": round(seconds * 1e6, 2),
                                      "algbw_gbps": round(algbw, 6), "busbw_gbps": round(algbw * factor, 6),
                                      "wrong": sum(m[3][i]["wrong"] for m in oks)})
    report["verdict"] = judge(report)
    return report


def render(report: dict) -> str:
    v = report["verdict"]
    lines = [f"# NCCL acceptance: {report['op']}, backend {report['backend']}, {report['world_size']} rank(s), "
             f"NCCL {report.get('nccl_version') or '-'} (torch {report['versions'].get('torch') or '-'})"]
    topo = report.get("topology") or {}
    if topo.get("source"):
        gpus = report.get("gpus") or []
        pairs = [f"GPU{a}-GPU{b} {topo['links'].get(f'GPU{a}', {}).get(f'GPU{b}', '?')} "
                 f"P2P {topo['p2p'].get(f'GPU{a}', {}).get(f'GPU{b}', '?')}" for a, b in combinations(gpus, 2)]
        pcie = [f"GPU{g['index']} Gen{g['gen_current']}/{g['gen_max']} x{g['width_current']}/{g['width_max']}"
                for g in topo.get("pcie", []) if g["index"] in gpus]
        lines.append(f"# topology ({topo['source']}): {'; '.join(pairs) or 'one GPU'}; PCIe (current/max) "
                     f"{', '.join(pcie) or '?'}")
    log = report.get("nccl_log") or {}
    if log.get("transports"):
        lines.append(f"# transport (NCCL_DEBUG=INFO): {', '.join(log['details'])}")
    lines.append(f"# {'size':>12} {'count':>11} {'time(us)':>10} {'algbw(GB/s)':>12} {'busbw(GB/s)':>12} {'#wrong':>7}")
    for r in report["results"]:
        lines.append(f"  {r['bytes']:>12} {r['count']:>11} {r['time_us']:>10.1f} {r['algbw_gbps']:>12.2f} "
                     f"{r['busbw_gbps']:>12.2f} {r['wrong']:>7}")
    lines.append(f"# expectation: {v['class']} ({'; '.join(v['why'])}): {v['bound_basis']}"
                 + (f", floor {v['floor_gbps']:.1f} GB/s" if v["floor_gbps"] is not None else ""))
    verdict = f"# verdict: {v['status'].upper()}"
    if v["busbw_gbps"] is not None and v["floor_gbps"] is not None:
        verdict += f": busbw {v['busbw_gbps']:.1f} GB/s at {v['judged_bytes']} B, floor {v['floor_gbps']:.1f} GB/s"
    lines.append(verdict)
    lines += [f"#   problem: {p}" for p in v["problems"]] + [f"#   cause: {c}" for c in v["causes"]]
    lines += [f"#   note: {n}" for n in v["notes"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=("nccl", "gloo"), default="nccl")
    parser.add_argument("--world-size", type=int, help="ranks (default: every GPU for nccl, 2 for gloo)")
    parser.add_argument("--min-bytes", type=parse_size, default=MIB, metavar="SIZE")
    parser.add_argument("--max-bytes", type=parse_size, default=1024 * MIB, metavar="SIZE")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=600, help="seconds for the whole run (a hang fails)")
    parser.add_argument("--floor-gbps", type=float, help="judge busbw against this floor instead of the table's")
    parser.add_argument("--no-transport", dest="transport", action="store_false",
                        help="do not set NCCL_DEBUG=INFO for this test (no transport diagnosis)")
    parser.add_argument("--nccl-log", metavar="FILE", help="keep NCCL_DEBUG=INFO's output in FILE")
    parser.add_argument("--inject-fault", action="store_true", help="corrupt one element on the last rank (tests)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--save", metavar="FILE", help="also write the JSON report to FILE")
    args = parser.parse_args(argv)
    try:
        report = run(args)
    except Exception as exc:  # noqa: BLE001 - exit 1 means "could not run", with the reason
        report = {"verdict": {"status": "error", "problems": [f"{type(exc).__name__}: {exc}"]}}
        print(json.dumps(report) if args.json else f"nccl_acceptance: {exc}", file=sys.stdout)
        return 1
    code = EXIT[report["verdict"]["status"]]
    report["ok"], report["exit_code"] = code == 0, code
    text = json.dumps(report, indent=2)
    if args.save:
        with open(args.save, "w") as f:
            f.write(text + "\n")
    print(text if args.json else render(report))
    return code


if __name__ == "__main__":
    sys.exit(main())
