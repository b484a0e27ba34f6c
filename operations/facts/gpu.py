"""Facts about NVIDIA GPUs as nvidia-smi and the loaded kernel driver report them.

Each fact is a command plus a parser; the parsers (`parse_query_gpu`, `parse_topology`,
`parse_driver_version`) are plain functions over the tool's own output, tested on captured
output from real machines. No fact ever fails the host: see `operations.facts.util`.
"""

from __future__ import annotations

import csv
import re
import shlex

from pyinfra.api import FactBase

from .util import answer, envelope, strip_ansi, wrap, wrap_answer, wrap_file

QUERY_FIELDS = "index,name,uuid,compute_cap,memory.total,driver_version,pci.bus_id"

LINK_TYPES = ("X", "SYS", "NODE", "PHB", "PXB", "PIX")
_DEVICE = re.compile(r"^(GPU|NIC)\d+$")


def _int_prefix(value: str) -> int | None:
    match = re.match(r"\s*(\d+)", value)
    return int(match.group(1)) if match else None


def _na(value: str) -> str | None:
    value = value.strip()
    return None if value in ("", "[N/A]", "N/A", "[Not Supported]") else value


def parse_query_gpu(lines: list[str]) -> list[dict]:
    """Parse `nvidia-smi --query-gpu=index,name,uuid,compute_cap,memory.total,driver_version,
    pci.bus_id --format=csv,noheader` (with or without `nounits`; a header line is skipped).

    >>> parse_query_gpu(["0, NVIDIA H100 80GB HBM3, GPU-5f3c...-x, 9.0, 81559 MiB, 580.159.04, "
    ...                  "00000000:18:00.0"])[0]["memory_mib"]
    81559
    """
    gpus = []
    for row in csv.reader((line for line in lines if line.strip()), skipinitialspace=True):
        if row and row[0].strip() == "index":
            continue  # a header (--format=csv)
        if len(row) < 7 or not row[0].strip().isdigit():
            continue
        index, name, uuid, cap, memory, driver, bus_id = (cell.strip() for cell in row[:7])
        gpus.append(
            {
                "index": int(index),
                "name": name,
                "uuid": uuid,
                "compute_capability": _na(cap),
                "memory_mib": _int_prefix(memory),
                "driver_version": _na(driver),
                "pci_bus_id": bus_id,
            }
        )
    return gpus


def _split_header(line: str) -> list[str]:
    cells = line.split("\t") if "\t" in line else re.split(r"\s{2,}", line)
    return [cell.strip() for cell in cells if cell.strip()]


def parse_topology(lines: list[str]) -> dict:
    """Parse `nvidia-smi topo -m` into links between devices plus affinity columns.

    Accepts the tool's tab-separated output (ANSI underline escapes included) and copies where
    the tabs became spaces. `nvlink` is true when any two GPUs are joined by NV#.

    >>> t = parse_topology(["\\tGPU0\\tGPU1\\tCPU Affinity\\tNUMA Affinity\\tGPU NUMA ID",
    ...                     "GPU0\\t X \\tPHB\\t0-63\\t0\\t\\tN/A", "GPU1\\tPHB\\t X \\t0-63\\t0\\t\\tN/A"])
    >>> t["links"]["GPU0"]["GPU1"], t["nvlink"], t["affinity"]["GPU1"]["NUMA Affinity"]
    ('PHB', False, '0')
    """
    header: list[str] | None = None
    devices: list[str] = []
    columns: list[str] = []
    links: dict[str, dict[str, str]] = {}
    affinity: dict[str, dict[str, str | None]] = {}
    for raw in lines:
        line = strip_ansi(raw).rstrip()
        if not line.strip():
            if header and links:
                break  # the legend follows the matrix
            continue
        cells = _split_header(line)
        if header is None:
            if cells and _DEVICE.match(cells[0]) and line[:1].isspace():
                header = cells
                devices = [c for c in cells if _DEVICE.match(c)]
                columns = [c for c in cells if not _DEVICE.match(c)]
            continue
        row = line.split()
        if not row or not _DEVICE.match(row[0]):
            break
        label, values = row[0], row[1:]
        links[label] = {
            dev: values[i] for i, dev in enumerate(devices) if i < len(values) and dev != label
        }
        rest = values[len(devices):]
        affinity[label] = {col: (_na(rest[i]) if i < len(rest) else None) for i, col in enumerate(columns)}
    gpus = [d for d in devices if d.startswith("GPU")]
    gpu_links = {(a, b): links.get(a, {}).get(b) for a in gpus for b in gpus if a != b}
    return {
        "gpus": gpus,
        "devices": devices,
        "links": links,
        "affinity": {k: v for k, v in affinity.items() if k.startswith("GPU")},
        "nvlink": any((v or "").startswith("NV") for v in gpu_links.values()),
    }


def parse_driver_version(lines: list[str]) -> dict:
    """Parse /proc/driver/nvidia/version.

    >>> parse_driver_version(["NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05"
    ...                       "  Release Build  (dvs-builder@U22-I3-AF03-09-1)  Tue Sep 23 2025"])
    {'version': '580.95.05', 'flavor': 'open', 'gcc': None}
    """
    version = flavor = gcc = None
    for line in lines:
        if line.startswith("NVRM version:"):
            text = line[len("NVRM version:"):]
            match = re.search(r"\s(\d+\.\d+(?:\.\d+)?)(?:\s|$)", text)
            version = match.group(1) if match else None
            if "Open Kernel Module" in text:
                flavor = "open"
            elif "Kernel Module" in text:
                flavor = "proprietary"
        elif line.startswith("GCC version:"):
            gcc = line[len("GCC version:"):].strip() or None
    return {"version": version, "flavor": flavor, "gcc": gcc}


class NvidiaGpus(FactBase):
    """GPUs as `nvidia-smi --query-gpu` lists them.

    .. code:: python

        host.get_fact(NvidiaGpus)
        {"status": "ok", "exit_code": 0, "error": None, "count": 2, "gpus": [
            {"index": 0, "name": "NVIDIA GeForce RTX 5090", "uuid": "GPU-...",
             "compute_capability": "12.0", "memory_mib": 32607, "driver_version": "580.95.05",
             "pci_bus_id": "00000000:01:00.0"}, ...]}

    With the driver not loaded: `{"status": "failed", "exit_code": 9, "error": "NVIDIA-SMI has
    failed ...", "count": 0, "gpus": []}`; without nvidia-smi: `"status": "missing"`.
    """

    command = wrap("nvidia-smi", f"nvidia-smi --query-gpu={QUERY_FIELDS} --format=csv,noheader")

    @staticmethod
    def default():
        return {"status": "missing", "exit_code": None, "error": "no output", "count": 0, "gpus": []}

    def process(self, output):
        result, body = envelope(output)
        gpus = parse_query_gpu(body) if result["status"] == "ok" else []
        return {**result, "count": len(gpus), "gpus": gpus}


class NvidiaTopology(FactBase):
    """How the GPUs are linked, from `nvidia-smi topo -m`.

    .. code:: python

        host.get_fact(NvidiaTopology)
        {"status": "ok", "exit_code": 0, "error": None, "gpus": ["GPU0", "GPU1"],
         "devices": ["GPU0", "GPU1"], "links": {"GPU0": {"GPU1": "PHB"}, "GPU1": {"GPU0": "PHB"}},
         "affinity": {"GPU0": {"CPU Affinity": "0-63", "NUMA Affinity": "0", "GPU NUMA ID": None},
                      ...},
         "nvlink": False}
    """

    command = wrap("nvidia-smi", "nvidia-smi topo -m")

    @staticmethod
    def default():
        return {"status": "missing", "exit_code": None, "error": "no output", "gpus": [], "devices": [],
                "links": {}, "affinity": {}, "nvlink": False}

    def process(self, output):
        result, body = envelope(output)
        if result["status"] != "ok":
            return {**self.default(), **result}
        return {**result, **parse_topology(body)}


class NvidiaDriver(FactBase):
    """The loaded NVIDIA kernel module, read from /proc/driver/nvidia/version (or `path`).

    .. code:: python

        host.get_fact(NvidiaDriver)
        {"status": "ok", "exit_code": 0, "error": None, "loaded": True, "version": "580.95.05",
         "flavor": "open", "gcc": "gcc version 12.3.0 (Ubuntu 12.3.0-1ubuntu1~22.04)"}

    Not loaded (no such file): `{"status": "missing", "loaded": False, "version": None, ...}`.
    """

    def command(self, path="/proc/driver/nvidia/version"):
        return wrap_file(path)

    @staticmethod
    def default():
        return {"status": "missing", "exit_code": None, "error": "not loaded", "loaded": False,
                "version": None, "flavor": None, "gcc": None}

    def process(self, output):
        result, body = envelope(output)
        if result["status"] == "missing":
            return {**self.default(), **result, "error": "not loaded"}
        parsed = parse_driver_version(body)
        return {**result, "loaded": result["status"] == "ok" and parsed["version"] is not None, **parsed}


class DriverRebootMarker(FactBase):
    """Whether this host already rebooted for a driver version, and whether that reboot happened.

    ``/var/lib/gpufleet/driver-reboots/<version>`` is written just before the reboot that should
    load ``version``, beside ``/run/gpufleet-driver-reboot/<version>``; /run is a tmpfs, so the
    second is gone once the host really rebooted. Both present: the reboot never happened (the
    control host died first, or the wait gave up): rebooting again is right.

    .. code:: python

        host.get_fact(DriverRebootMarker, version="580.95.05")
        {"marker": True, "rebooted_since": True}
    """

    def command(self, version: str) -> str:
        v = shlex.quote(version)
        return wrap_answer(f"[ -f /var/lib/gpufleet/driver-reboots/{v} ] && echo marker; "
                           f"[ -e /run/gpufleet-driver-reboot/{v} ] && echo pending")

    @staticmethod
    def default():
        return {"marker": False, "rebooted_since": False}

    def process(self, output):
        lines = {line.strip() for line in answer(output)}
        return {"marker": "marker" in lines, "rebooted_since": "marker" in lines and "pending" not in lines}
