"""Stand-in hosts: containers that behave like machines (systemd as PID 1, sshd, own Docker).

Flags follow LAB.md: ``--privileged`` is refused in these sandboxes, so the containers get every
capability except CAP_SYS_RESOURCE, no seccomp/AppArmor profile, the host's cgroup namespace,
a tmpfs /run (cleared by a reboot, as on a real machine) and a named volume for
/var/lib/docker (the inner engine cannot run on overlayfs). A container whose spec is unchanged
is adopted as it is; one whose spec changed is replaced.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time

import docker

from gpufleet.lab.topology import LABEL, NETWORK, LabHost

SPEC_LABEL = f"{LABEL}.spec"


def volume_name(host: LabHost) -> str:
    return f"gpufleet-lab-{host.name}-docker"


def _spec(host: LabHost, image: str, standins: str) -> str:
    # The stand-in packages' digest is part of it: a host that installed an older build of a
    # stand-in (same version string, other content) is replaced rather than kept.
    return hashlib.sha256(json.dumps([host.name, host.ssh_port, host.service_ports(), image, standins, 1]
                                     ).encode()).hexdigest()[:16]


def ensure_host(client: docker.DockerClient, host: LabHost, image: str, authorized_key: str, standins: str) -> str:
    """Start (or adopt) one stand-in host; return "adopted", "started" or "replaced"."""
    spec = _spec(host, image, standins)
    outcome = "started"
    try:
        existing = client.containers.get(host.name)
    except docker.errors.NotFound:
        existing = None
    if existing is not None:
        if existing.labels.get(SPEC_LABEL) == spec:
            if existing.status != "running":
                existing.start()
            # The key may be another checkout's (CI runs in a fresh clone): always install ours.
            put_file(existing, "/root/.ssh/authorized_keys", authorized_key.encode(), 0o600)
            return "adopted"
        existing.remove(force=True)
        remove_volume(client, volume_name(host))  # a replaced machine starts with empty disks
        outcome = "replaced"
    container = client.containers.run(
        image,
        "/sbin/init",
        name=host.name,
        hostname=host.name,
        detach=True,
        labels={LABEL: "host", SPEC_LABEL: spec},
        cap_add=["ALL"],
        cap_drop=["SYS_RESOURCE"],
        security_opt=["seccomp=unconfined", "apparmor=unconfined"],
        cgroupns="host",
        volumes={
            "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
            volume_name(host): {"bind": "/var/lib/docker", "mode": "rw"},
        },
        tmpfs={"/run": "", "/run/lock": "", "/tmp": ""},
        ports={"22/tcp": ("127.0.0.1", host.ssh_port),
               **{f"{inside}/tcp": ("127.0.0.1", local) for inside, local in host.service_ports().items()}},
        restart_policy={"Name": "unless-stopped"},
        network=NETWORK,
        stop_signal="SIGRTMIN+3",  # what systemd expects for a clean shutdown
    )
    put_file(container, "/root/.ssh/authorized_keys", authorized_key.encode(), 0o600)
    return outcome


def remove_volume(client, name: str) -> None:
    try:
        client.volumes.get(name).remove(force=True)
    except docker.errors.NotFound:
        pass


def put_file(container, path: str, data: bytes, mode: int = 0o644) -> None:
    """Write one file into a container (parent directories must exist)."""
    directory, name = path.rsplit("/", 1)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), mode, int(time.time())
        tar.addfile(info, io.BytesIO(data))
    container.put_archive(directory or "/", buf.getvalue())


def run(container, command: str) -> tuple[int, str]:
    code, output = container.exec_run(["sh", "-c", command])
    return code, output.decode(errors="replace")


def wait_until_booted(container, timeout: float = 120) -> str:
    """Wait until systemd has finished booting and sshd has host keys; return the ed25519 public key."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        code, state = run(container, "systemctl is-system-running")
        state = state.strip()
        if state in ("running", "degraded"):
            code, key = run(container, "systemctl is-active ssh >/dev/null && cat /etc/ssh/ssh_host_ed25519_key.pub")
            # Only a key: under load, Docker can answer an exec that exited 0 with no output, and an
            # empty key in known_hosts locks every SSH client out of the host (seen in CI).
            if code == 0 and key.strip().startswith("ssh-ed25519 "):
                return key.strip()
        time.sleep(0.5)
    _, failed = run(container, "systemctl --failed --no-legend")
    raise TimeoutError(f"{container.name}: not booted after {timeout:.0f}s (systemd: {state!r}; failed units: {failed.strip()})")


def lab_containers(client: docker.DockerClient) -> list:
    return client.containers.list(all=True, filters={"label": LABEL})
