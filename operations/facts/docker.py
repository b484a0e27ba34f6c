"""Docker's configuration and GPU containers, as the host sees them (never failing the host)."""

from __future__ import annotations

import json
import shlex

from pyinfra.api import FactBase

from .util import MISSING, envelope, for_docker_ids, wrap, wrap_file

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


class GpuContainers(FactBase):
    """Running containers that were given GPUs (``--gpus`` device requests or the nvidia runtime).

    A ``systemctl daemon-reload`` takes the GPUs away from such containers unless the toolkit
    runs in CDI mode ("Failed to initialize NVML: Unknown Error"), so operations that would
    reload systemd check this first.

    .. code:: python

        host.get_fact(GpuContainers)
        {"status": "ok", "containers": ["vllm-gpu-node-1-vllm-0"]}
    """

    command = wrap(
        "docker",
        "ids=$(docker ps -q); [ -z \"$ids\" ] || docker inspect --format "
        "'{{.Name}}|{{.HostConfig.Runtime}}|{{json .HostConfig.DeviceRequests}}' $ids",
    )

    @staticmethod
    def default():
        return {"status": "missing", "exit_code": None, "error": "docker not installed", "containers": []}

    def process(self, output):
        if any(line.strip() == MISSING for line in output):
            return self.default()
        result, body = envelope(output)
        containers = []
        for line in body:
            parts = line.strip().split("|", 2)
            if len(parts) != 3:
                continue
            name, runtime, requests = parts
            if runtime == "nvidia" or '"gpu"' in requests:
                containers.append(name.lstrip("/"))
        return {**result, "containers": sorted(containers)}


SPEC_LABEL = "io.gpufleet.spec"  # digest of a container's desired spec (operations/containers.py)


class ContainerState(FactBase):
    """One container's state and the spec digest gpufleet labelled it with.

    .. code:: python

        host.get_fact(ContainerState, container="vllm-gpu-node-1-vllm-0")
        {"exists": True, "running": True, "status": "running", "restarting": False, "spec": "3f2a...",
         "image_id": "sha256:...", "image": "gpufleet/vllm-rtx5090:ab12", "restart_count": 0}

    No such container (or no Docker): ``{"exists": False, ...}``.
    """

    def command(self, container: str) -> str:
        fmt = ('{{.State.Status}}|{{.State.Restarting}}|{{index .Config.Labels "' + SPEC_LABEL + '"}}|'
               "{{.Image}}|{{.Config.Image}}|{{.RestartCount}}")
        return wrap("docker", f"docker inspect --type container --format '{fmt}' {shlex.quote(container)}")

    @staticmethod
    def default():
        return {"exists": False, "running": False, "status": None, "restarting": False, "spec": None,
                "image_id": None, "image": None, "restart_count": 0}

    def process(self, output):
        result, body = envelope(output)
        line = next((b for b in body if b.count("|") == 5), None)
        if result["status"] != "ok" or line is None:
            return self.default()
        status, restarting, spec, image_id, image, restarts = line.strip().split("|")
        return {"exists": True, "running": status == "running", "status": status,
                "restarting": restarting == "true", "spec": spec if spec not in ("", "<no value>") else None,
                "image_id": image_id, "image": image, "restart_count": int(restarts or 0)}


class ImageState(FactBase):
    """Whether an image exists locally, its id and its labels.

    .. code:: python

        host.get_fact(ImageState, ref="gpufleet/vllm-rtx5090:ab12")
        {"exists": True, "id": "sha256:...", "labels": {"io.gpufleet.inputs": "ab12"}}
    """

    def command(self, ref: str) -> str:
        return wrap("docker", f"docker image inspect --format '{{{{.Id}}}}|{{{{json .Config.Labels}}}}' {shlex.quote(ref)}")

    @staticmethod
    def default():
        return {"exists": False, "id": None, "labels": {}}

    def process(self, output):
        result, body = envelope(output)
        line = next((b for b in body if b.startswith("sha256:")), None)
        if result["status"] != "ok" or line is None:
            return self.default()
        image_id, _, labels = line.partition("|")
        try:
            parsed = json.loads(labels) or {}
        except ValueError:
            parsed = {}
        return {"exists": True, "id": image_id, "labels": parsed}


class ManagedContainers(FactBase):
    """Every container gpufleet runs (those with the spec label), with the image its tag names now.

    .. code:: python

        host.get_fact(ManagedContainers)
        {"status": "ok", "containers": [{"name": "milvus", "status": "running", "restarting": False,
          "restart_count": 0, "image_id": "sha256:aa..", "image": "milvusdb/milvus:v2.6.11",
          "tag_id": "sha256:aa.."}]}

    ``tag_id`` differs from ``image_id`` when another image was put under the pinned tag after
    the container started; it is None when the tag no longer exists locally. A Docker that does
    not answer is ``"status": "failed"``, never an empty list.
    """

    # One `docker inspect` for every container (a container removed meanwhile is left out), then
    # the image each one's tag names now. A failing `docker ps` fails the read (its exit status),
    # never "no containers".
    command = wrap(
        "docker",
        for_docker_ids(f"-aq --filter label={SPEC_LABEL}")
        + "docker inspect --format '{{.Name}}|{{.State.Status}}|{{.State.Restarting}}|{{.RestartCount}}|"
        "{{.Image}}|{{.Config.Image}}' $ids 2>/dev/null | while IFS='|' read -r n s r k i ref; do "
        "t=$(docker image inspect --format '{{.Id}}' \"$ref\" 2>/dev/null); "
        "echo \"$n|$s|$r|$k|$i|$ref|$t\"; done",
    )

    @staticmethod
    def default():
        return {"status": "missing", "exit_code": None, "error": "docker not installed", "containers": []}

    def process(self, output):
        result, body = envelope(output)
        containers = []
        for line in body:
            parts = line.strip().split("|")
            if len(parts) != 7:
                continue
            name, status, restarting, restarts, image_id, ref, tag_id = parts
            if name.endswith(".gpufleet-previous"):
                continue  # kept, stopped, for a rollout to roll back to (operations/containers.py)
            containers.append({"name": name.lstrip("/"), "status": status, "restarting": restarting == "true",
                               "restart_count": int(restarts or 0), "image_id": image_id, "image": ref,
                               "tag_id": tag_id or None})
        return {**result, "containers": sorted(containers, key=lambda c: c["name"])}


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
            # A failing `docker ps` fails the read, never "no vLLM container".
            for_docker_ids(f"-q --filter label={SPEC_LABEL} --filter name=^vllm-")
            + "docker inspect --format '{{.Id}}@{{.Image}}@{{.State.StartedAt}} {{.Name}}' $ids 2>/dev/null | "
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
