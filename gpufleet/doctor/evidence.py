"""Read one GPU node into an evidence dict: everything `gpufleet doctor`'s rules judge, nothing else.

Two shell round trips per node (operations/facts/doctor.py), each with its own timeout:

1. the host snapshot (:data:`SNAPSHOT_TIMEOUT`): GPUs, clocks, PCIe links, topology, the loaded and
   installed driver, Secure Boot, the kernel log's NVIDIA lines, ACS, Docker, daemon.json,
   systemd's pending reloads, the toolkit, every vLLM container (``docker inspect``) and its log;
2. the container probes (:data:`PROBES_TIMEOUT`), only when there are vLLM containers: inside each
   one the NCCL vLLM loads and torch's architectures, the GPUs and the /dev/shm it sees.

Both run under ``sudo`` when the host's data sets ``_sudo`` (Docker, dmesg and ACS need root).
Nothing on the node changes; the one thing started is, for a replica that is down, a throw-away
``docker run --rm --network none`` of its image (no GPU) to read the NCCL and torch it ships. A round trip that fails or times out is recorded in
``evidence["read"]`` and the node counts as not (fully) checked: doctor exits 1.

The evidence is a plain dict (JSON-serialisable), so the rules are tested on dicts alone.
``declared`` is what the repository says the node should be (from its validated settings)::

    {"host": "gpu-node-01",
     "read": {"complete": True, "errors": [], "round_trips": [{"name": "snapshot", "ok": True, "seconds": 1.8}]},
     "read_at": 1796116444.0,  # epoch seconds when the snapshot came back
     "declared": {"gpu_count": 2, "tp": 2, "nccl_version": "2.27.7", "shm_size": "16g", ...,
                  "replicas": [{"name": "gpu-node-01-vllm-0", "container": "vllm-gpu-node-01-vllm-0",
                                "gpus": [0, 1], "port": 8000}]},
     "gpus": {...}, "gpu_perf": {...}, "pcie": {...}, "driver": {...}, "containers": [...],
     "logs": {...}, "probes": {"vllm-gpu-node-01-vllm-0": {"nccl": {...}, "smi": {...}, "shm_kib": 16777216}}}
"""

from __future__ import annotations

import json
import time
from typing import Any

from gpufleet import PROJECT_ROOT
from gpufleet.fleet import FleetHost, replicas_of
from operations.facts.doctor import DoctorProbes, DoctorSnapshot, size_bytes
from operations.util import sudo_arguments

SNAPSHOT_TIMEOUT = 90  # seconds for the host round trip (every tool in it has its own 20 s limit)
PROBES_TIMEOUT = 420  # the NCCL check imports torch in each container (up to 180 s in a fresh one)


def _model_config(value: str | dict | None) -> dict | None:
    """The model's config.json fields (settings' vllm_model_config: the fields or a path to them)."""
    if isinstance(value, dict) or value is None:
        return value
    from pathlib import Path

    path = Path(value).expanduser()
    path = path if path.is_absolute() else PROJECT_ROOT / path
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def declared(node: FleetHost) -> dict[str, Any]:
    """What the repository declares for this node, as plain data for the rules.

    >>> from gpufleet.fleet import FleetHost
    >>> from gpufleet.settings import HostSettings
    >>> d = declared(FleetHost("gpu-node-01", ["gpu_nodes"], HostSettings(gpu_count=2, gpu_memory_gib=31.84), {}))
    >>> d["replicas"][0]["container"], d["shm_bytes"], d["tp"]
    ('vllm-gpu-node-01-vllm-0', 17179869184, 2)
    """
    s = node.settings
    return {
        "gpu_count": s.gpu_count,
        "gpu_name": s.gpu_name,
        "gpu_memory_gib": s.gpu_memory_gib,
        "compute_capability": s.gpu_compute_capability,
        "driver_version": s.nvidia_driver_version,
        "driver_package": s.nvidia_driver_packages[0],
        "kernel_modules": s.nvidia_kernel_modules,
        "nccl_version": s.nccl_version,
        "tp": s.vllm_tensor_parallel_size,
        "model": s.vllm_model,
        "model_config": _model_config(s.vllm_model_config),
        "quantization": s.vllm_quantization,
        "max_model_len": s.vllm_max_model_len,
        "gpu_memory_utilization": s.vllm_gpu_memory_utilization,
        "extra_args": list(s.vllm_extra_args),
        "env": dict(s.vllm_env),
        "shm_size": s.vllm_shm_size,
        "shm_bytes": size_bytes(s.vllm_shm_size),
        "allow_debug_settings": s.allow_debug_settings,
        "replicas": [{"name": r.name, "container": f"vllm-{r.name}", "gpus": list(r.gpus), "port": r.port}
                     for r in replicas_of(node)],
    }


def _round_trip(host, name: str, command: str, timeout: int, sudo: dict, read: dict) -> list[str] | None:
    from gpufleet.remote import shell

    started = time.monotonic()
    try:
        ok, text = shell(host, command, timeout=timeout, **sudo)
    except TimeoutError:
        ok, text, why = False, None, f"{name}: no answer within {timeout} s"
    except Exception as exc:  # noqa: BLE001 - an SSH error is a read failure of this node, not a crash
        ok, text, why = False, None, f"{name}: {type(exc).__name__}: {exc}"
    else:
        why = None if ok else f"{name}: the command failed: {text.strip().splitlines()[-1] if text.strip() else ''}"
    read["round_trips"].append({"name": name, "ok": ok, "seconds": round(time.monotonic() - started, 2)})
    if why:
        read["errors"].append(why)
        read["complete"] = False
    return text.splitlines() if text is not None else None


def read_node(host, node: FleetHost) -> dict[str, Any]:
    """The evidence dict for one connected pyinfra host (see the module docstring)."""
    s = node.settings
    sudo = sudo_arguments(host)
    evidence: dict[str, Any] = {"host": node.name, "declared": declared(node),
                                "read": {"complete": True, "errors": [], "round_trips": []}}
    snapshot = DoctorSnapshot()
    lines = _round_trip(host, "snapshot", snapshot.command(s.nvidia_proc_version_path, tuple(s.nvidia_driver_packages)),
                        SNAPSHOT_TIMEOUT, sudo, evidence["read"])
    if lines is None:
        return evidence
    # When the containers were read, for their age since Docker's StartedAt (a crash loop is a recent
    # start, gpufleet.doctor.rules): the control host's clock, which NTP keeps within seconds of the node's.
    evidence["read_at"] = time.time()
    evidence.update(snapshot.process(lines))
    evidence["probes"] = {}
    if evidence["containers"]:
        probes = DoctorProbes()
        lines = _round_trip(host, "container probes", probes.command(evidence["containers"]), PROBES_TIMEOUT, sudo,
                            evidence["read"])
        if lines is not None:
            evidence["probes"] = probes.process(lines)
    return evidence
