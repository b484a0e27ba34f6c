"""Docker's configuration and GPU containers, as the host sees them (never failing the host)."""

from __future__ import annotations

import json
import shlex

from pyinfra.api import FactBase

from . import docker_api
from .util import envelope, wrap, wrap_file

# Where operations/vllm.image copies files/vllm_nccl_check.py into the image (and every reader runs it).
CHECK_IN_IMAGE = "/opt/gpufleet/vllm_nccl_check.py"

DAEMON_JSON = "/etc/docker/daemon.json"


def parse_daemon_json(lines: list[str]) -> dict:
    """``{"status": "ok"|"missing"|"invalid", "config": dict, "error": str|None}``.

    >>> parse_daemon_json(['{"runtimes": {"nvidia": {"path": "nvidia-container-runtime"}}}'])["config"]
    {'runtimes': {'nvidia': {'path': 'nvidia-container-runtime'}}}
    """
    text = "\n".join(lines).strip()
    if not text:
        return {"status": "ok", "config": {}, "error": None}  # an empty file is an empty config
    try:
        config = json.loads(text)
    except ValueError as exc:
        return {"status": "invalid", "config": {}, "error": f"not JSON: {exc}"}
    if not isinstance(config, dict):
        return {"status": "invalid", "config": {}, "error": "not a JSON object"}
    return {"status": "ok", "config": config, "error": None}


class DockerDaemonConfig(FactBase):
    """/etc/docker/daemon.json, parsed; compare it as data, never as bytes.

    .. code:: python

        host.get_fact(DockerDaemonConfig)
        {"status": "ok", "config": {"runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}}},
         "error": None}

    No file: ``{"status": "missing", "config": {}}``; unparseable: ``"status": "invalid"``.
    """

    command = wrap_file(DAEMON_JSON)

    @staticmethod
    def default():
        return {"status": "missing", "config": {}, "error": "no such file"}

    def process(self, output):
        result, body = envelope(output)
        if result["status"] != "ok":
            return {**self.default(), "status": result["status"], "error": result["error"]}
        return parse_daemon_json(body)


def holds_gpu(container: dict) -> bool:
    """Given GPUs (a container's ``HostConfig`` as Docker's API and ``docker inspect`` show it):
    ``--gpus`` or CDI device requests, the nvidia runtime, or /dev/nvidia* devices.

    >>> holds_gpu({"Runtime": "runc", "DeviceRequests": [{"Driver": "", "Count": -1, "Capabilities": [["gpu"]]}]})
    True
    >>> holds_gpu({"Runtime": "runc", "DeviceRequests": None, "Devices": [{"PathOnHost": "/dev/fuse"}]})
    False
    """
    if container.get("Runtime") == "nvidia":
        return True
    for request in container.get("DeviceRequests") or []:
        capabilities = [c for group in request.get("Capabilities") or [] for c in group]
        ids = request.get("DeviceIDs") or []
        if "gpu" in capabilities or request.get("Driver") == "nvidia" or any("nvidia.com/gpu" in i for i in ids):
            return True
    return any((d.get("PathOnHost") or "").startswith(("/dev/nvidia", "nvidia.com/gpu"))
               for d in container.get("Devices") or [])


class GpuContainers(FactBase):
    """Running containers that were given GPUs (:func:`holds_gpu`, the rule drift's "holds GPUs"
    uses too: ``--gpus``, the nvidia runtime, CDI names and /dev/nvidia* devices; wider than the
    ``--gpus``/runtime test of earlier versions, on the safe side: a false "holds GPUs" only asks for
    a drain).

    A ``systemctl daemon-reload`` takes the GPUs away from such containers unless the toolkit
    runs in CDI mode ("Failed to initialize NVML: Unknown Error"), so operations that would
    reload systemd check this first. Read from Docker's API (operations/facts/docker_api.py).

    .. code:: python

        host.get_fact(GpuContainers)
        {"status": "ok", "exit_code": 0, "error": None, "containers": ["vllm-gpu-node-1-vllm-0"]}
    """

    command = wrap("docker", docker_api.inspect_listed(docker_api.list_path("containers")))

    @staticmethod
    def default():
        return {"status": "missing", "exit_code": None, "error": "docker not installed", "containers": []}

    def process(self, output):
        result, found, _ = docker_api.read_answers(output)
        if result["status"] == "missing":
            return self.default()
        containers = [c.get("Name", "").lstrip("/") for c in found if holds_gpu(c.get("HostConfig") or {})]
        return {**result, "containers": sorted(containers)}


SPEC_LABEL = "io.gpufleet.spec"  # digest of a container's desired spec (operations/containers.py)


class ContainerState(FactBase):
    """One container's state and the spec digest gpufleet labelled it with.

    .. code:: python

        host.get_fact(ContainerState, container="vllm-gpu-node-1-vllm-0")
        {"exists": True, "running": True, "status": "running", "restarting": False, "spec": "3f2a...",
         "image_id": "sha256:...", "image": "gpufleet/vllm-rtx5090:ab12", "restart_count": 0}

    No such container, no Docker, or a Docker that does not answer (as the CLI version read it):
    ``{"exists": False, ...}``. Read from Docker's API (operations/facts/docker_api.py).
    """

    def command(self, container: str) -> str:
        return wrap("docker", docker_api.get(docker_api.path_of("containers", container)))

    batch_reader = docker_api.InspectBatch("containers", "container")  # all of a plan's in one curl

    @staticmethod
    def default():
        return {"exists": False, "running": False, "status": None, "restarting": False, "spec": None,
                "image_id": None, "image": None, "restart_count": 0}

    def process(self, output):
        result, found, _ = docker_api.read_answers(output)
        if result["status"] != "ok" or not found:
            return self.default()
        container = found[0]
        state, config = container.get("State") or {}, container.get("Config") or {}
        return {"exists": True, "running": state.get("Status") == "running", "status": state.get("Status"),
                "restarting": bool(state.get("Restarting")), "spec": (config.get("Labels") or {}).get(SPEC_LABEL) or None,
                "image_id": container.get("Image"), "image": config.get("Image"),
                "restart_count": int(container.get("RestartCount") or 0)}


class ImageState(FactBase):
    """Whether an image exists locally, its id and its labels.

    .. code:: python

        host.get_fact(ImageState, ref="gpufleet/vllm-rtx5090:ab12")
        {"exists": True, "id": "sha256:...", "labels": {"io.gpufleet.inputs": "ab12"}}
    """

    def command(self, ref: str) -> str:
        return wrap("docker", docker_api.get(docker_api.path_of("images", ref)))

    batch_reader = docker_api.InspectBatch("images", "ref")  # all of a plan's in one curl

    @staticmethod
    def default():
        return {"exists": False, "id": None, "labels": {}}

    def process(self, output):
        result, found, _ = docker_api.read_answers(output)
        if result["status"] != "ok" or not found:
            return self.default()
        image = found[0]
        return {"exists": True, "id": image.get("Id"), "labels": (image.get("Config") or {}).get("Labels") or {}}


class VllmNcclVersions(FactBase):
    """The NCCL version each running vLLM container loads, read inside the container.

    Runs the image's own check (files/vllm_nccl_check.py ``--running``: the library the engine's
    processes have mapped, without importing torch; the full check when none maps one) in every
    running gpufleet container named ``vllm-*``, except where ``known`` already has the answer.

    + known: ``{"<container id>@<image id>@<started at>": version}`` from earlier reads (the
      control host keeps them: operations/nccl_checks.py). The processes of a container run can only
      map what they mapped when it started, so its answer holds until the container is recreated
      or restarted, which changes the key: the check then runs inside it again, once.

    .. code:: python

        host.get_fact(VllmNcclVersions)
        {"status": "ok", "containers": {"vllm-gpu-node-1-vllm-0": "2.27.7"},
         "keys": {"vllm-gpu-node-1-vllm-0": "3f2a…@sha256:9c1d…@2026-12-06T11:21:46.171107366Z"}}

    A container whose check cannot run reports None; a Docker that does not answer makes the read
    ``"status": "failed"`` (no containers listed).
    """

    @staticmethod
    def prefetch_kwargs(host_name: str) -> dict:
        """The arguments to read it with: the answers kept now (operations/nccl_checks.py). The
        prefetch reads it so (operations/fact_prefetch.py), and so does drift."""
        from operations import nccl_checks

        return {"known": nccl_checks.known(host_name)}

    def command(self, known: dict[str, str] | None = None) -> str:
        answered = "".join(f"{shlex.quote(key)}) v={shlex.quote(version)} ;; "
                           for key, version in sorted((known or {}).items()) if version)
        return wrap(
            "docker",
            # A failing list fails the read, never "no vLLM container".
            docker_api.for_listed_ids(docker_api.list_path("containers", label=[SPEC_LABEL], name=["^vllm-"]))
            # Each run's key and name from Docker's API (no docker CLI process); `docker exec` only
            # for a run it has no answer for.
            + "{ " + docker_api.run_keys() + "; } | "
            f"while read -r key n; do case \"$key\" in {answered}*) c=${{key%%@*}}; "
            f"out=$(docker exec \"$c\" python3 {CHECK_IN_IMAGE} --running 2>/dev/null </dev/null); "
            # An image built before --running existed prints only its usage (on stderr): the full check.
            f"[ -n \"$out\" ] || out=$(docker exec \"$c\" python3 {CHECK_IN_IMAGE} 2>/dev/null </dev/null); "
            "v=$(printf '%s' \"$out\" | "
            "python3 -c 'import json,sys; print(json.load(sys.stdin).get(\"nccl_version\") or \"\")' 2>/dev/null) ;; "
            "esac; echo \"nccl|${n#/}|$v|$key\"; done",
            limit=240,  # the fallback imports torch in each running replica
        )

    @staticmethod
    def default():
        return {"status": "missing", "exit_code": None, "error": "docker not installed", "containers": {}, "keys": {}}

    def process(self, output):
        result, body = envelope(output)
        found, keys = {}, {}
        for line in body:
            parts = line.strip().split("|")
            if len(parts) in (3, 4) and parts[0] == "nccl":
                found[parts[1]] = parts[2] or None
                if len(parts) == 4 and parts[3]:
                    keys[parts[1]] = parts[3]
        return {**result, "containers": found, "keys": keys}
