"""What every container on a host runs with *now*: the settings ``docker update`` and
``docker network connect/disconnect`` can change after creation, and the GPUs it holds.

The spec digest label (operations/containers.py) says which spec a container was created from;
labels never change afterwards, so this fact is what shows a container changed in place.
"""

from __future__ import annotations

import json

from pyinfra.api import FactBase

from .docker import SPEC_LABEL
from .util import envelope, for_docker_ids, wrap

# `docker update` flags and the HostConfig fields they set (docker container update --help).
LIMIT_FIELDS = ("Memory", "MemoryReservation", "MemorySwap", "NanoCpus", "CpuShares", "CpuPeriod", "CpuQuota",
                "CpusetCpus", "CpusetMems", "PidsLimit", "BlkioWeight")

TEMPLATE = (
    '{"id":{{json .Id}},"name":{{json .Name}},'
    '"spec":{{json (index .Config.Labels "' + SPEC_LABEL + '")}},'
    '"status":{{json .State.Status}},"restart_count":{{json .RestartCount}},'
    '"restart_policy":{{json .HostConfig.RestartPolicy}},"runtime":{{json .HostConfig.Runtime}},'
    '"device_requests":{{json .HostConfig.DeviceRequests}},"devices":{{json .HostConfig.Devices}},'
    '"network_mode":{{json .HostConfig.NetworkMode}},"networks":{{json .NetworkSettings.Networks}},'
    '"limits":{' + ",".join(f'"{f}":{{{{json .HostConfig.{f}}}}}' for f in LIMIT_FIELDS) + "}}"
)


def holds_gpu(container: dict) -> bool:
    """Given GPUs: ``--gpus`` or CDI device requests, the nvidia runtime, or /dev/nvidia* devices.

    >>> holds_gpu({"runtime": "runc", "device_requests": [{"Driver": "", "Count": -1, "Capabilities": [["gpu"]]}]})
    True
    >>> holds_gpu({"runtime": "runc", "device_requests": None, "devices": [{"PathOnHost": "/dev/fuse"}]})
    False
    """
    if container.get("runtime") == "nvidia":
        return True
    for request in container.get("device_requests") or []:
        capabilities = [c for group in request.get("Capabilities") or [] for c in group]
        ids = request.get("DeviceIDs") or []
        if "gpu" in capabilities or request.get("Driver") == "nvidia" or any("nvidia.com/gpu" in i for i in ids):
            return True
    return any((d.get("PathOnHost") or "").startswith(("/dev/nvidia", "nvidia.com/gpu"))
               for d in container.get("devices") or [])


def parse_container(line: str) -> dict | None:
    """One line of the fact's ``docker inspect`` template, or None if it is not one."""
    try:
        raw = json.loads(line)
    except ValueError:
        return None
    if not isinstance(raw, dict) or "id" not in raw:
        return None
    policy = raw.get("restart_policy") or {}
    return {
        "id": raw["id"], "name": (raw.get("name") or "").lstrip("/"), "spec": raw.get("spec") or None,
        "status": raw.get("status"), "restart_count": int(raw.get("restart_count") or 0),
        "restart_policy": policy.get("Name") or "no", "restart_retries": int(policy.get("MaximumRetryCount") or 0),
        "runtime": raw.get("runtime"), "device_requests": raw.get("device_requests") or [],
        "devices": raw.get("devices") or [], "network_mode": raw.get("network_mode"),
        "networks": sorted(raw.get("networks") or {}), "limits": raw.get("limits") or {},
    }


class ContainerRuntimes(FactBase):
    """Every container (running or not), as ``docker inspect`` shows it now.

    .. code:: python

        host.get_fact(ContainerRuntimes)
        {"status": "ok", "exit_code": 0, "error": None, "containers": [
          {"id": "4c1f...", "name": "milvus-standalone", "spec": "3f2a...", "status": "running",
           "restart_count": 0, "restart_policy": "unless-stopped", "restart_retries": 0, "runtime": "runc",
           "device_requests": [], "devices": [], "network_mode": "milvus", "networks": ["milvus"],
           "limits": {"Memory": 0, "NanoCpus": 0, ...}}]}

    ``spec`` is the ``io.gpufleet.spec`` label (None: not a container gpufleet runs). A container
    removed while the fact runs is left out, not an error; a Docker that does not answer is
    ``"status": "failed"`` (never an empty list).
    """

    # A failing `docker ps` fails the read: "no containers" would be "nothing changed in place" to drift.
    command = wrap("docker", for_docker_ids("-aq") + f"docker inspect --format '{TEMPLATE}' $ids")

    @staticmethod
    def default():
        return {"status": "missing", "exit_code": None, "error": "docker not installed", "containers": []}

    def process(self, output):
        result, body = envelope(output)
        containers = [c for c in (parse_container(line) for line in body if line.startswith("{")) if c]
        others = [line for line in body if line.strip() and not line.startswith("{")]
        if result["status"] == "failed" and all("No such object" in line for line in others):
            result = {"status": "ok", "exit_code": 0, "error": None}  # removed between `ps` and `inspect`
        return {**result, "containers": sorted(containers, key=lambda c: c["name"])}
