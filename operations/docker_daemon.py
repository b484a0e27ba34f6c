"""The Docker engine on a host: package, service and /etc/docker/daemon.json (merged as data)."""

from __future__ import annotations

import copy
import json

from pyinfra import host
from pyinfra.api import OperationError, operation

from operations.facts.docker import DAEMON_JSON, DockerDaemonConfig, GpuContainers
from operations.serving_gate import GPU_STACK, ServingInterruption
from operations.util import put_text

NVIDIA_RUNTIME = {"nvidia": {"args": [], "path": "nvidia-container-runtime"}}


def merged(current: dict, wanted: dict) -> dict:
    """``current`` with ``wanted`` merged in: nested objects merge, everything else is replaced.

    >>> merged({"a": {"x": 1}, "keep": True}, {"a": {"y": 2}})
    {'a': {'x': 1, 'y': 2}, 'keep': True}
    """
    out = copy.deepcopy(current)
    for key, value in wanted.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def render_daemon_json(config: dict) -> str:
    # The layout nvidia-ctk writes (4-space indent, sorted keys): a file either tool touched
    # last looks the same, though we only ever compare the parsed data.
    return json.dumps(config, indent=4, sort_keys=True) + "\n"


DAEMON_RELOAD_REFUSAL = "would run `systemctl daemon-reload` while GPU containers run"


def refuse_daemon_reload_under_gpu_containers(what: str) -> None:
    """Fail the host before a step that reloads systemd while GPU containers run.

    ``systemctl daemon-reload`` (which package installs and unit changes trigger) takes the GPUs
    away from running containers started through the nvidia runtime hook (``--gpus``), as
    gpufleet starts them (NVIDIA/nvidia-container-toolkit#48): drain the node first. Raised as a
    :class:`ServingInterruption` of kind ``GPU_STACK``: ``gpufleet rollout`` stops the node's GPU
    containers after draining it, and this check then passes.

    A ``"features": {"cdi": true}`` in daemon.json does not lift it: only containers started with
    CDI device names (``--device nvidia.com/gpu=...``, Docker >= 25) keep their devices, and the
    fleet's Docker is Debian 12's docker.io 20.10, which has no CDI (README, "Decisions").

    A Docker that is installed but does not answer fails the host instead (OperationError): it
    cannot say that no GPU container runs. No Docker at all (a fresh host) is no container.
    """
    found = host.get_fact(GpuContainers)
    if found["status"] == "failed":
        # Docker is installed and did not answer: containers may still run (live-restore) and
        # hold GPUs. Not knowing is no "none": fail the host, and say what to look at.
        raise OperationError(
            f"{what} would run `systemctl daemon-reload`, and Docker did not say which containers hold "
            f"GPUs ({found['error']}): a reload drops the GPUs of any that run. Find why Docker does "
            "not answer (`systemctl status docker`), then deploy again.")
    running = found["containers"]
    if running:
        raise ServingInterruption(
            f"{what} {DAEMON_RELOAD_REFUSAL} "
            f"({', '.join(running)}); that drops their GPUs (NVML: Unknown Error). "
            "Drain the node first (stop its replicas, e.g. with `gpufleet rollout`).",
            what, GPU_STACK)


@operation()
def daemon_config(wanted: dict):
    """
    Merge keys into /etc/docker/daemon.json, keeping every other key; compare as parsed data.

    + wanted: the keys gpufleet owns, e.g. ``{"runtimes": {"nvidia": {...}}}``

    Nothing is written when the merged configuration equals the current one, however the file
    is formatted. An unparseable file fails the host rather than being overwritten.
    Restart Docker with ``_if=<this op>.did_change``.

    **Example:**

    .. code:: python

        conf = docker.daemon_config(wanted={"runtimes": docker.NVIDIA_RUNTIME})
        systemd.service(service="docker", restarted=True, _if=conf.did_change)
    """
    current = host.get_fact(DockerDaemonConfig)
    if current["status"] == "invalid":
        raise OperationError(f"{DAEMON_JSON} is not valid JSON ({current['error']}); fix it by hand")
    if current["status"] not in ("ok", "missing"):
        # Never write over a file we could not read: its keys would be lost.
        raise OperationError(f"cannot read {DAEMON_JSON} ({current['error']})")
    config = merged(current["config"], wanted)
    if config == current["config"] and current["status"] == "ok":
        host.noop(f"{DAEMON_JSON} has {', '.join(sorted(wanted))}")
        return
    yield "install -d -m 0755 /etc/docker"
    yield from put_text(DAEMON_JSON, render_daemon_json(config))
