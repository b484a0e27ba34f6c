"""Images the lab builds locally (no public registry is reachable): the bare host and the registry.

Each image is tagged with a digest of its inputs, so an unchanged input reuses the cached image
and a changed one rebuilds it.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tempfile
from pathlib import Path

import docker

from gpufleet.lab.progress import say, step
from gpufleet.lab.topology import LAB_DIR

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What a freshly installed minimal server has; the deploy installs everything else.
BASE_PACKAGES = [
    "openssh-server", "python3", "systemd", "systemd-sysv", "dbus", "iproute2",
    "ca-certificates", "curl", "gnupg", "sudo", "procps",
]
BASE_REPO = "gpufleet-lab/host"
REGISTRY_REPO = "gpufleet-lab/registry"


def _digest(*parts: str | bytes | Path) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            for f in sorted(p for p in part.rglob("*") if p.is_file()):
                h.update(f.relative_to(part).as_posix().encode())
                h.update(f.read_bytes())
        else:
            h.update(part if isinstance(part, bytes) else part.encode())
    return h.hexdigest()[:12]


def _exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def base_image(client: docker.DockerClient) -> str:
    """The bare host image: debootstrap minbase + sshd + systemd, per-host SSH keys at first boot."""
    tag = f"{BASE_REPO}:{_digest(SUITE, MIRROR, ','.join(BASE_PACKAGES), LAB_DIR / 'base')}"
    if _exists(client, tag):
        say(f"base image {tag} cached")
        return tag
    if not shutil.which("debootstrap"):
        raise RuntimeError("debootstrap is not installed (apt-get install debootstrap); it builds the lab's base image")
    with tempfile.TemporaryDirectory(prefix="gpufleet-lab-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        with step(f"debootstrap {SUITE} (a cold build takes a few minutes)"):
            subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(rootfs), MIRROR],
                check=True, stdout=subprocess.DEVNULL,
            )
        _customise_rootfs(rootfs)
        with step(f"import {tag}"):
            subprocess.run(
                f"tar -C {rootfs} -c . | docker import --change 'CMD [\"/sbin/init\"]' "
                f"--change 'ENV container=docker' - {tag}",
                shell=True, check=True, stdout=subprocess.DEVNULL,
            )
    return tag


def _customise_rootfs(rootfs: Path) -> None:
    # No host keys in the image: each host makes its own on first boot.
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    shutil.copy(LAB_DIR / "base" / "sources.list", rootfs / "etc/apt/sources.list")
    unit = "lab-ssh-hostkeys.service"
    shutil.copy(LAB_DIR / "base" / unit, rootfs / "lib/systemd/system" / unit)
    wants = rootfs / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / unit).symlink_to(f"/lib/systemd/system/{unit}")
    # Consoles do not exist in a container; their gettys only fail and restart.
    for masked in ("getty@tty1.service", "console-getty.service"):
        (rootfs / "etc/systemd/system" / masked).symlink_to("/dev/null")
    ssh_dir = rootfs / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (rootfs / "etc/machine-id").write_text("")
    (rootfs / "etc/apt/apt.conf.d/99gpufleet-lab").write_text(
        '// gpufleet lab: keep the image small; hosts behave like a fresh server otherwise.\n'
        'Acquire::Languages "none";\n'
    )


def registry_image(client: docker.DockerClient, base: str) -> str:
    """A Docker registry (Debian's docker-registry package) built on the base image."""
    dockerfile = (
        f"FROM {base}\n"
        "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker-registry"
        " && rm -rf /var/lib/apt/lists/*\n"
        # No authentication: the registry is reachable only on the lab's network and 127.0.0.1.
        "RUN printf 'version: 0.1\\nstorage:\\n  filesystem:\\n    rootdirectory: /var/lib/docker-registry\\n"
        "http:\\n  addr: :5000\\n' > /etc/docker/registry/config.yml\n"
        "EXPOSE 5000\n"
        'CMD ["/usr/bin/docker-registry", "serve", "/etc/docker/registry/config.yml"]\n'
    )
    tag = f"{REGISTRY_REPO}:{_digest(dockerfile)}"
    if _exists(client, tag):
        say(f"registry image {tag} cached")
        return tag
    with step(f"build {tag}"):
        client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True, network_mode="bridge")
    return tag


def remove_images(client: docker.DockerClient) -> list[str]:
    removed = []
    for repo in (BASE_REPO, REGISTRY_REPO):
        for image in client.images.list(name=repo):
            for tag in image.tags:
                client.images.remove(tag, force=True)
                removed.append(tag)
    return removed
