"""Docker Engine API documents for tests, and a stand-in daemon serving them (:class:`StandInDocker`), in Docker's own field names and shapes (the ones
``GET /containers/{id}/json`` and ``GET /images/{name}/json`` return, which ``docker inspect``
prints), and the output a fact's ``curl`` prints for them (operations/facts/docker_api.py).

Only the fields the facts read are filled in; every other field a real answer has is left out,
so a fact that started reading one would find it missing here and fail its test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from operations.facts.docker_api import BASE, HTTP, SOCKET

RC0 = "__gpufleet_rc=0"
NO_LIMITS = {"Memory": 0, "MemoryReservation": 0, "MemorySwap": 0, "NanoCpus": 0, "CpuShares": 0, "CpuPeriod": 0,
             "CpuQuota": 0, "CpusetCpus": "", "CpusetMems": "", "PidsLimit": None, "BlkioWeight": 0}


def container(name: str, *, cid: str | None = None, labels: dict | None = None, status: str = "running",
              restart_count: int = 0, image_id: str = "sha256:" + "1" * 64, image: str = "lab/image:1",
              restart: str = "unless-stopped", runtime: str = "runc", device_requests: list | None = None,
              devices: list | None = None, networks: tuple[str, ...] = ("bridge",), limits: dict | None = None,
              started_at: str = "2026-12-06T11:21:46.171107366Z") -> dict:
    """One container as ``GET /containers/{id}/json`` answers, its keys in dockerd's order (``Args``
    and ``State`` before the top-level ``Image`` and ``Name``; ``HostConfig``, ``Mounts`` and
    ``Config``, which hold keys of the same names, after them)."""
    return {
        "Id": cid or f"{abs(hash(name)):064x}"[:64], "Path": "serve", "Args": [],
        "State": {"Status": status, "Running": status == "running", "Restarting": status == "restarting",
                  "StartedAt": started_at},
        "Image": image_id, "Name": f"/{name}", "RestartCount": restart_count,
        "HostConfig": {"RestartPolicy": {"Name": restart, "MaximumRetryCount": 0}, "Runtime": runtime,
                       "DeviceRequests": device_requests, "Devices": devices or [],
                       "NetworkMode": networks[0] if networks else "default", **NO_LIMITS, **(limits or {})},
        "Mounts": [],
        "Config": {"Image": image, "Labels": labels or {}},
        "NetworkSettings": {"Networks": {n: {"IPAddress": "172.18.0.2"} for n in networks}},
    }


def image(image_id: str, *, labels: dict | None = None, digests: list[str] | None = None,
          layers: list[str] | None = None) -> dict:
    """One image as ``GET /images/{name}/json`` answers."""
    return {"Id": image_id, "RepoDigests": digests or [], "Config": {"Labels": labels},
            "RootFS": {"Type": "layers", "Layers": layers or []}}


def listed(*containers: dict) -> list[dict]:
    """``GET /containers/json``: the list's entries (their ``Id`` is what the facts take from it)."""
    return [{"Id": c["Id"], "Names": [c["Name"]], "Image": c["Config"]["Image"], "ImageID": c["Image"],
             "State": c["State"]["Status"], "Labels": c["Config"]["Labels"]} for c in containers]


def not_found(path: str) -> dict:
    kind = "image" if path.startswith("/images/") else "container"
    return {"message": f"No such {kind}: {path.split('/', 2)[-1].rsplit('/json', 1)[0]}"}


def answers(*asked: tuple[str, int, object], rc: int = 0) -> list[str]:
    """What a fact's ``curl -w`` prints for these ``(path, status, document)`` answers, then the
    envelope's status line."""
    lines = []
    for path, status, document in asked:
        lines += [json.dumps(document if document is not None else not_found(path)), f"{HTTP}{status} {BASE}{path}"]
    return lines + [f"__gpufleet_rc={rc}"]


def inspected(*containers: dict) -> list[tuple[str, int, dict]]:
    """Each container's inspect answer (200)."""
    return [(f"/containers/{c['Id']}/json", 200, c) for c in containers]


class StandInDocker:
    """A Docker daemon's API (tests/unit/fake_docker_api.py, a process of its own) and a `docker`
    CLI stand-in (`cli`, a script; by default one that only logs its calls) for one test."""

    def __init__(self, tmp_path, routes: dict, cli: str = "#!/bin/sh\necho \"$*\" >> \"$(dirname \"$0\")/calls\"\n"):
        self.tmp_path, self.socket = tmp_path, str(tmp_path / "docker.sock")
        (tmp_path / "docker").write_text(cli)
        (tmp_path / "docker").chmod(0o755)
        self.env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
        self.server = subprocess.Popen(
            [sys.executable, str(Path(__file__).parent / "fake_docker_api.py"), self.socket,
             json.dumps({path: list(answer) for path, answer in routes.items()}), str(tmp_path / "api.log")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.server.stdout.readline().strip() == "ready"

    def read(self, command: str) -> list[str]:
        done = subprocess.run(["sh", "-c", self.aimed(command)], capture_output=True, text=True, env=self.env,
                              timeout=30)
        assert done.returncode == 0, done.stderr  # the envelope: the read's status is in its output
        return done.stdout.splitlines()

    def aimed(self, command: str) -> str:
        """The command, asking this stand-in's socket instead of the host's Docker."""
        assert SOCKET in command
        return command.replace(SOCKET, self.socket)

    def asked(self) -> list[str]:
        log = self.tmp_path / "api.log"
        return log.read_text().splitlines() if log.exists() else []

    def cli_calls(self) -> list[str]:
        calls = self.tmp_path / "calls"
        return calls.read_text().splitlines() if calls.exists() else []

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait(timeout=10)
