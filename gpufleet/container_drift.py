"""Containers changed in place, and containers holding GPUs that gpufleet does not run.

A container's ``io.gpufleet.spec`` label is its spec's digest at creation, and labels never change,
so the plan (which compares that label with the repository's spec) misses everything done to a
container afterwards: ``docker update`` (restart policy, memory and CPU limits) and ``docker
network disconnect/connect``. Here the running container's actual HostConfig and networks are
compared with the :class:`operations.containers.ContainerSpec` the deploy reconciles it to — only
when its label says it was created from that spec (otherwise the plan already reports a recreate).

Example::

    >>> from operations.containers import ContainerSpec
    >>> spec = ContainerSpec(name="milvus-etcd", image="quay.io/coreos/etcd:v3.5.25", networks=["milvus"])
    >>> runtime_differences(spec, {"restart_policy": "no", "restart_retries": 0, "network_mode": "milvus",
    ...                            "networks": [], "limits": {"Memory": 536870912}})
    ['restart policy no, the spec says unless-stopped', 'memory limit 512 MiB, the spec sets none', \
'not connected to network milvus']
"""

from __future__ import annotations

import re

from operations.containers import ContainerSpec

# HostConfig field -> (docker run flags that set it, what to call it)
LIMIT_FLAGS = {
    "Memory": (("--memory", "-m"), "memory limit"),
    "MemoryReservation": (("--memory-reservation",), "memory reservation"),
    "MemorySwap": (("--memory-swap",), "memory+swap limit"),
    "NanoCpus": (("--cpus",), "CPU limit"),
    "CpuShares": (("--cpu-shares", "-c"), "CPU shares"),
    "CpuPeriod": (("--cpu-period",), "CPU CFS period"),
    "CpuQuota": (("--cpu-quota",), "CPU CFS quota"),
    "CpusetCpus": (("--cpuset-cpus",), "CPU set"),
    "CpusetMems": (("--cpuset-mems",), "memory nodes"),
    "PidsLimit": (("--pids-limit",), "PIDs limit"),
    "BlkioWeight": (("--blkio-weight",), "block I/O weight"),
}
BYTE_FIELDS = {"Memory", "MemoryReservation", "MemorySwap"}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([bkmgtp]?)b?$", re.IGNORECASE)


def size_bytes(text: str) -> int:
    """Docker's sizes (binary units): ``"16g"`` -> 17179869184; ``"-1"`` (unlimited) -> -1.

    >>> size_bytes("512m"), size_bytes("1.5g"), size_bytes("-1")
    (536870912, 1610612736, -1)
    """
    if text.strip() == "-1":
        return -1
    match = _SIZE.match(text.strip())
    if not match:
        raise ValueError(f"not a size: {text!r}")
    power = " bkmgtp".index((match.group(2) or "b").lower()) - 1
    return int(float(match.group(1)) * 1024 ** max(power, 0))


def human(field: str, value) -> str:
    if field in BYTE_FIELDS and isinstance(value, int) and value > 0:
        for unit, power in (("GiB", 3), ("MiB", 2), ("KiB", 1)):
            if value >= 1024 ** power and value % 1024 ** power == 0:
                return f"{value // 1024 ** power} {unit}"
        return f"{value} B"
    if field == "NanoCpus" and isinstance(value, int):
        return f"{value / 1e9:g} CPUs"
    return str(value)


def flag_values(args: list[str]) -> dict[str, str]:
    """``--flag value`` and ``--flag=value`` pairs of a ``docker run`` argument list (the last wins)."""
    found = {}
    for i, arg in enumerate(args):
        if arg.startswith("-") and "=" in arg:
            flag, _, value = arg.partition("=")
            found[flag] = value
        elif arg.startswith("-") and i + 1 < len(args):
            found[arg] = args[i + 1]
    return found


def _unset(field: str, value) -> bool:
    # Docker reports an unset PIDs limit as null, 0 or (after `docker update --pids-limit -1`) -1;
    # -1 is unlimited swap too.
    return value in (None, 0, "", -1) if field in ("PidsLimit", "MemorySwap") else value in (None, 0, "")


def expected_limits(spec: ContainerSpec) -> dict[str, object]:
    """The HostConfig limits ``spec`` asks for (fields it does not set are expected unset)."""
    flags = flag_values(spec.extra_args)
    wanted: dict[str, object] = {}
    for field, (names, _) in LIMIT_FLAGS.items():
        value = next((flags[n] for n in names if n in flags), None)
        if value is None:
            continue
        if field in BYTE_FIELDS:
            wanted[field] = size_bytes(value)
        elif field == "NanoCpus":
            wanted[field] = round(float(value) * 1e9)
        elif field in ("CpusetCpus", "CpusetMems"):
            wanted[field] = value
        else:
            wanted[field] = int(value)
    # dockerd sets the swap limit to twice the memory limit when only the latter is given.
    if "Memory" in wanted and "MemorySwap" not in wanted:
        wanted["MemorySwap"] = None  # not compared
    return wanted


def expected_networks(spec: ContainerSpec) -> list[str] | None:
    """The networks the container joins: the spec's, or its --network mode; None: not compared."""
    if spec.networks:
        return sorted(spec.networks)
    mode = flag_values(spec.extra_args).get("--network") or flag_values(spec.extra_args).get("--net")
    if mode and mode.startswith("container:"):
        return None  # shares another container's network stack: nothing of its own
    return [mode or "bridge"]


def restart_text(name: str, retries: int = 0) -> str:
    return f"{name}:{retries}" if name == "on-failure" and retries else name


def runtime_differences(spec: ContainerSpec, observed: dict) -> list[str]:
    """What ``observed`` (a :class:`operations.facts.container_runtime.ContainerRuntimes` entry)
    runs with that ``spec`` does not say: restart policy, limits, networks."""
    out = []
    name, _, retries = spec.restart.partition(":")
    if (observed.get("restart_policy"), observed.get("restart_retries") or 0) != (name, int(retries or 0)):
        out.append(f"restart policy {restart_text(observed.get('restart_policy') or 'no', observed.get('restart_retries') or 0)}"
                   f", the spec says {spec.restart}")
    wanted = expected_limits(spec)
    actual = observed.get("limits") or {}
    for field, (_, what) in LIMIT_FLAGS.items():
        if field in wanted and wanted[field] is None:
            continue
        want, have = wanted.get(field), actual.get(field)
        if field not in wanted:
            if not _unset(field, have):
                out.append(f"{what} {human(field, have)}, the spec sets none")
        elif have != want:
            out.append(f"{what} {human(field, have)}, the spec says {human(field, want)}")
    networks = expected_networks(spec)
    if networks is not None:
        have = set(observed.get("networks") or [])
        out += [f"not connected to network {n}" for n in networks if n not in have]
        out += [f"connected to network {n}, which the spec does not name" for n in sorted(have - set(networks))]
    return out


def unmanaged_gpu_holders(containers: list[dict]) -> list[dict]:
    """Running containers given GPUs that carry no gpufleet spec label: they take GPU memory and
    compute from the replicas, and nothing in the repository accounts for them."""
    from operations.facts.container_runtime import holds_gpu

    return [c for c in containers if not c.get("spec") and c.get("status") in ("running", "restarting", "paused")
            and holds_gpu(c)]


def describe_gpus(container: dict) -> str:
    """How a container was given GPUs, in words: ``--gpus "device=0,1"``, ``nvidia runtime``, ..."""
    ways = []
    for request in container.get("device_requests") or []:
        ids = request.get("DeviceIDs") or []
        ways.append(f"--gpus device={','.join(ids)}" if ids else
                    f"--gpus {'all' if request.get('Count') == -1 else request.get('Count')}")
    if container.get("runtime") == "nvidia":
        ways.append("nvidia runtime")
    ways += [d["PathOnHost"] for d in container.get("devices") or []
             if (d.get("PathOnHost") or "").startswith(("/dev/nvidia", "nvidia.com/gpu"))]
    return ", ".join(ways) or "GPUs"
