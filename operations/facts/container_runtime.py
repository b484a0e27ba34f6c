"""What every container on a host runs with *now*: its state, the image its tag names now, the
settings ``docker update`` and ``docker network connect/disconnect`` can change after creation,
and the GPUs it holds.

The spec digest label (operations/containers.py) says which spec a container was created from;
labels never change afterwards, so this fact is what shows a container changed in place.
"""

from __future__ import annotations

from pyinfra.api import FactBase

from . import docker_api
from .docker import SPEC_LABEL, holds_gpu as host_config_holds_gpu
from .util import wrap

# `docker update` flags and the HostConfig fields they set (docker container update --help).
LIMIT_FIELDS = ("Memory", "MemoryReservation", "MemorySwap", "NanoCpus", "CpuShares", "CpuPeriod", "CpuQuota",
                "CpusetCpus", "CpusetMems", "PidsLimit", "BlkioWeight")


def holds_gpu(container: dict) -> bool:
    """Given GPUs (a container as this fact reports it): operations.facts.docker.holds_gpu's rule.

    >>> holds_gpu({"runtime": "runc", "device_requests": [{"Driver": "", "Count": -1, "Capabilities": [["gpu"]]}]})
    True
    >>> holds_gpu({"runtime": "runc", "device_requests": None, "devices": [{"PathOnHost": "/dev/fuse"}]})
    False
    """
    return host_config_holds_gpu({"Runtime": container.get("runtime"), "DeviceRequests": container.get("device_requests"),
                                  "Devices": container.get("devices")})


def parse_container(raw: dict, tag_ids: dict[str, str] | None = None) -> dict:
    """One container as Docker's API (``docker inspect``) shows it -> the fields this fact reports;
    ``tag_ids``: ``{image inspect path: image id}`` of the references asked beside it.

    >>> parse_container({"Id": "4c1f", "Name": "/milvus", "Config": {"Labels": {}}, "State": {"Status": "exited"},
    ...                  "HostConfig": {"RestartPolicy": {"Name": "unless-stopped"}, "Memory": 0}})["restart_policy"]
    'unless-stopped'
    """
    host_config, state, config = raw.get("HostConfig") or {}, raw.get("State") or {}, raw.get("Config") or {}
    policy = host_config.get("RestartPolicy") or {}
    ref = config.get("Image") or ""
    return {
        "id": raw.get("Id"), "name": (raw.get("Name") or "").lstrip("/"),
        "spec": (config.get("Labels") or {}).get(SPEC_LABEL) or None,
        "status": state.get("Status"), "restarting": bool(state.get("Restarting")),
        "restart_count": int(raw.get("RestartCount") or 0),
        "image_id": raw.get("Image"), "image": ref, "tag_id": (tag_ids or {}).get(docker_api.path_of("images", ref)),
        "restart_policy": policy.get("Name") or "no", "restart_retries": int(policy.get("MaximumRetryCount") or 0),
        "runtime": host_config.get("Runtime"), "device_requests": host_config.get("DeviceRequests") or [],
        "devices": host_config.get("Devices") or [], "network_mode": host_config.get("NetworkMode"),
        "networks": sorted((raw.get("NetworkSettings") or {}).get("Networks") or {}),
        "limits": {field: host_config.get(field) for field in LIMIT_FIELDS},
    }


class ContainerRuntimes(FactBase):
    """Every container (running or not), as ``docker inspect`` shows it now, with the image its
    reference (tag) names now.

    .. code:: python

        host.get_fact(ContainerRuntimes)
        {"status": "ok", "exit_code": 0, "error": None, "containers": [
          {"id": "4c1f...", "name": "milvus-standalone", "spec": "3f2a...", "status": "running",
           "restarting": False, "restart_count": 0, "image_id": "sha256:aa..",
           "image": "milvusdb/milvus:v2.6.11", "tag_id": "sha256:aa..",
           "restart_policy": "unless-stopped", "restart_retries": 0, "runtime": "runc",
           "device_requests": [], "devices": [], "network_mode": "milvus", "networks": ["milvus"],
           "limits": {"Memory": 0, "NanoCpus": 0, ...}}]}

    ``spec`` is the ``io.gpufleet.spec`` label (None: not a container gpufleet runs). ``tag_id``
    differs from ``image_id`` when another image was put under the container's tag after it was
    created; it is None when the tag no longer exists locally. A container removed while the fact
    runs is left out, not an error; a Docker that does not answer is ``"status": "failed"`` (never
    an empty list). Drift's checks of state, tags and in-place changes all read this one fact.
    """

    # One list, one inspect of them all, one inspect of the images their references name now
    # (three curl processes: operations/facts/docker_api.py). A failing list fails the read: "no
    # containers" would be "nothing changed in place" to drift. A container removed between the list
    # and its inspect answers 404 and is left out; so does a tag no longer on the host (tag_id None).
    command = wrap("docker", docker_api.inspect_listed_and_their_images(
        docker_api.list_path("containers", all_states=True)))

    @staticmethod
    def default():
        return {"status": "missing", "exit_code": None, "error": "docker not installed", "containers": []}

    def process(self, output):
        result, found, body = docker_api.read_answers(output, under="/containers/")
        if result["status"] == "missing":
            return self.default()
        tag_ids = {path: doc.get("Id") for code, path, doc in docker_api.responses(body)
                   if path.startswith("/images/") and code == 200 and isinstance(doc, dict)}
        return {**result, "containers": sorted((parse_container(raw, tag_ids) for raw in found), key=lambda c: c["name"])}
