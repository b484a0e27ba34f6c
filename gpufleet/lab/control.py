"""`gpufleet lab up|down|status`: bring the whole lab to the requested shape, or remove it."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import docker
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gpufleet.lab import aptrepo, disk, hosts, images, serving_images
from gpufleet.lab.pcidump import lspci_dump
from gpufleet.lab.progress import say, step
from gpufleet.lab.topology import (
    HOSTS_FILE, KNOWN_HOSTS, LABEL, NETWORK, REGISTRY_ALIAS, REGISTRY_CONTAINER, REGISTRY_LOCAL_PORT,
    REGISTRY_PORT, REPO_ALIAS, REPO_CONTAINER, REPO_DIR, SSH_KEY, STATE_DIR, LabHost, lab_hosts,
    read_hosts_file, write_hosts_file,
)


class LabError(RuntimeError):
    """The lab cannot be brought up (no Docker engine, a build failed, a host did not boot)."""


def docker_client() -> docker.DockerClient:
    try:
        client = docker.from_env(timeout=300)
        client.ping()
        return client
    except docker.errors.DockerException as exc:
        raise LabError(f"no Docker engine answers ({exc}); start dockerd (see README: `make lab-up`)") from exc


def up(nodes: int, lbs: int, data_hosts: int = 0) -> list[LabHost]:
    started = time.monotonic()
    wanted = lab_hosts(nodes, lbs, data_hosts)
    client = docker_client()
    public_key = _ensure_ssh_key()
    base = images.base_image(client)
    registry = images.registry_image(client, base)
    aptrepo.build_repository()
    # The kernel the hosts run is the Docker engine's (not always this process's machine).
    try:
        aptrepo.build_kernel_archive(client.info()["KernelVersion"])
    except ValueError as exc:
        raise LabError(str(exc)) from None
    _ensure_network(client)
    _ensure_service(client, REPO_CONTAINER, REPO_ALIAS, base,
                    ["python3", "-m", "http.server", "80", "--directory", "/srv/repo"],
                    volumes={str(REPO_DIR): {"bind": "/srv/repo", "mode": "ro"}})
    _ensure_service(client, REGISTRY_CONTAINER, REGISTRY_ALIAS, registry, None,
                    ports={f"{REGISTRY_PORT}/tcp": ("127.0.0.1", REGISTRY_LOCAL_PORT)})
    _publish(client, base, "gpufleet-lab/toolkit-check:1")
    serving = serving_images.build_all(docker_client, base, _publish)
    _check_room_for_new_nodes(client, wanted, [local_tag for local_tag, _ in serving])
    wanted_names = {h.name for h in wanted}
    for container in hosts.lab_containers(client):
        if container.labels.get(LABEL) == "host" and container.name not in wanted_names:
            say(f"removing {container.name} (not in the requested lab)")
            container.remove(force=True)
            hosts.remove_volume(client, hosts.volume_name(LabHost(container.name, "", 0)))
    with step(f"start {len(wanted)} stand-in hosts"):
        for host in wanted:
            outcome = hosts.ensure_host(client, host, base, public_key, aptrepo.inputs_digest())
            say(f"{host.name}: {outcome} (ssh 127.0.0.1:{host.ssh_port})")
    write_hosts_file(wanted)
    _write_lab_gpus(client, wanted)
    with step("wait for systemd and sshd on every host"):
        with ThreadPoolExecutor(max_workers=len(wanted)) as pool:
            keys = list(pool.map(lambda h: hosts.wait_until_booted(client.containers.get(h.name)), wanted))
    KNOWN_HOSTS.write_text("".join(f"[127.0.0.1]:{h.ssh_port} {k}\n" for h, k in zip(wanted, keys)))
    _add_kernel_archive(client, [h for h in wanted if h.group == "gpu_nodes"])
    say(f"lab up: {len(wanted)} hosts in {time.monotonic() - started:.1f}s; inventory: inventory/lab.py")
    return wanted


KERNEL_SOURCE = "/etc/apt/sources.list.d/gpufleet-lab-kernel-archive.list"


def _add_kernel_archive(client: docker.DockerClient, nodes: list[LabHost]) -> None:
    """Give each GPU node the stand-in archive of its kernel's headers, with its index read, as a
    real host has its distribution's archive (gpufleet/lab/aptrepo.py: build_kernel_archive)."""
    line = f"deb [trusted=yes] http://{REPO_ALIAS}/{aptrepo.KERNEL_ARCHIVE} ./\n"
    for host in nodes:
        container = client.containers.get(host.name)
        hosts.put_file(container, KERNEL_SOURCE, line.encode())
        # Every time (a second, this index is one package): a list removed or left from an
        # archive built for another kernel must not hide the headers from the preflight.
        code, out = hosts.run(container, f"apt-get update -q -o Dir::Etc::sourcelist={KERNEL_SOURCE} "
                                         "-o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0")
        if code != 0:
            raise LabError(f"{host.name}: reading the stand-in kernel archive failed: {out[-500:]}")


def _check_room_for_new_nodes(client: docker.DockerClient, wanted: list[LabHost], serving_tags: list[str]) -> None:
    new_gpu_nodes = 0
    for host in wanted:
        try:
            client.volumes.get(hosts.volume_name(host))
        except docker.errors.NotFound:
            new_gpu_nodes += host.group == "gpu_nodes"
    try:
        disk.check_room(client, new_gpu_nodes, serving_tags)
    except disk.NotEnoughDisk as exc:
        raise LabError(str(exc)) from None


def _ensure_ssh_key() -> str:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    pub = SSH_KEY.with_suffix(".pub")
    if not SSH_KEY.exists():
        key = Ed25519PrivateKey.generate()
        SSH_KEY.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                              serialization.NoEncryption()))
        SSH_KEY.chmod(0o600)
        pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                      serialization.PublicFormat.OpenSSH) + b" gpufleet-lab\n")
    return pub.read_text()


def _ensure_network(client: docker.DockerClient) -> None:
    if not client.networks.list(names=[NETWORK]):
        client.networks.create(NETWORK, driver="bridge", labels={LABEL: "network"})


def _ensure_service(client, name: str, alias: str, image: str, command, volumes=None, ports=None) -> None:
    """A support container (apt repository, registry): adopted when its spec is unchanged."""
    spec = hashlib.sha256(json.dumps([image, command, volumes, ports], sort_keys=True).encode()).hexdigest()[:16]
    try:
        existing = client.containers.get(name)
        if existing.labels.get(hosts.SPEC_LABEL) == spec:
            if existing.status != "running":
                existing.start()
            return
        existing.remove(force=True)
    except docker.errors.NotFound:
        pass
    container = client.containers.create(
        image, command, name=name, hostname=alias, detach=True, labels={LABEL: "service", hosts.SPEC_LABEL: spec},
        volumes=volumes or {}, ports=ports or {}, restart_policy={"Name": "unless-stopped"},
    )
    client.networks.get(NETWORK).connect(container, aliases=[alias])
    container.start()


def _publish(client: docker.DockerClient, image: str, name: str) -> None:
    """Make `image` pullable by the hosts as lab-registry:5000/<name> (pushed via 127.0.0.1).

    Pushed again only when the registry's manifest is not this image's (a rebuilt image under
    the same name replaces the old one, as a re-tagged release would).
    """
    repo, tag = name.rsplit(":", 1)
    local = f"127.0.0.1:{REGISTRY_LOCAL_PORT}/{repo}"
    request = urllib.request.Request(
        f"http://{local.split('/', 1)[0]}/v2/{repo}/manifests/{tag}", method="HEAD",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    for _ in range(50):  # the registry may still be starting
        try:
            remote = urllib.request.urlopen(request, timeout=2).headers.get("Docker-Content-Digest")
            break
        except urllib.error.HTTPError:
            remote = None
            break
        except OSError:
            time.sleep(0.2)
    else:
        raise LabError(f"the lab registry does not answer on 127.0.0.1:{REGISTRY_LOCAL_PORT}")
    pushed = client.images.get(image).attrs.get("RepoDigests") or []
    if remote and f"{local}@{remote}" in pushed:
        return
    with step(f"publish {name} to the lab registry"):
        client.images.get(image).tag(local, tag)
        for line in client.images.push(local, tag, stream=True, decode=True):
            if "error" in line:
                raise LabError(f"push {name}: {line['error']}")


def _write_lab_gpus(client: docker.DockerClient, wanted: list[LabHost]) -> None:
    """Give each host's stand-in nvidia-smi the GPUs its lab data describes (none on non-GPU hosts)."""
    from gpufleet.fleet import load_fleet
    from gpufleet.lab.topology import LAB_DIR

    fleet = load_fleet(LAB_DIR.parent / "inventory" / "lab.py", cwd=str(LAB_DIR.parent))
    for host in wanted:
        settings = fleet.hosts[host.name].settings
        gpus = [g.model_dump() for g in settings.lab_gpus or []] if host.group == "gpu_nodes" else []
        container = client.containers.get(host.name)
        hosts.run(container, "mkdir -p /etc/gpufleet-lab")
        hosts.put_file(container, "/etc/gpufleet-lab/gpus.json", (json.dumps(gpus, indent=2) + "\n").encode())
        hosts.put_file(container, "/etc/gpufleet-lab/lspci.dump", lspci_dump(gpus).encode())


def down(purge: bool = False) -> list[str]:
    client = docker_client()
    removed = []
    for container in hosts.lab_containers(client):
        container.remove(force=True)
        removed.append(f"container {container.name}")
    for volume in client.volumes.list():
        if volume.name.startswith("gpufleet-lab-"):
            volume.remove(force=True)
            removed.append(f"volume {volume.name}")
    for network in client.networks.list(names=[NETWORK]):
        network.remove()
        removed.append(f"network {network.name}")
    if STATE_DIR.exists():
        shutil.rmtree(STATE_DIR)
        removed.append(f"state {STATE_DIR}")
    if purge:
        from gpufleet.lab import images_vllm

        removed += [f"image {t}" for t in images.remove_images(client) + images_vllm.remove_images(client)]
    return removed


def status() -> dict:
    """{hosts: [{name, group, ssh_port, state}], services: [...], up: bool}."""
    client = docker_client()
    recorded = read_hosts_file() or []
    found = {c.name: c for c in hosts.lab_containers(client)}
    rows = [{"name": h.name, "group": h.group, "ssh_port": h.ssh_port,
             "state": found[h.name].status if h.name in found else "missing"} for h in recorded]
    services = [{"name": n, "state": found[n].status if n in found else "missing"}
                for n in (REPO_CONTAINER, REGISTRY_CONTAINER)]
    ok = bool(rows) and all(r["state"] == "running" for r in rows + services)
    return {"up": ok, "hosts": rows, "services": services, "hosts_file": str(HOSTS_FILE)}
