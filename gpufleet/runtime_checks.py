"""Drift a deploy plan cannot see: what the running host is doing, not what is on its disk.

Each check reads facts (never changes anything) and returns DriftItems. The checks that look at
serving containers use the names the serving operations give them (gpufleet.names).
"""

from __future__ import annotations

from gpufleet.drift import DriftItem
from gpufleet.fleet import Fleet
from gpufleet.settings import HostSettings


def run(host, settings: HostSettings, fleet: Fleet) -> list[DriftItem]:
    items: list[DriftItem] = []
    if settings.gpu_count:
        items += driver_loaded(host, settings)
        items += gpu_health(host, settings)
    for check in EXTRA_CHECKS:
        items += check(host, settings, fleet)
    return items


def driver_loaded(host, settings: HostSettings) -> list[DriftItem]:
    """The driver package on disk is not the module in the kernel: a reboot is pending."""
    from operations.facts.apt import PackageStates
    from operations.facts.gpu import NvidiaDriver

    loaded = host.get_fact(NvidiaDriver, path=settings.nvidia_proc_version_path)
    package = settings.nvidia_driver_packages[0]
    installed = host.get_fact(PackageStates, packages=[package]).get(package, {}).get("version")
    upstream = installed.split(":")[-1].split("-")[0] if installed else None
    if not loaded.get("loaded"):
        return [DriftItem("runtime", "driver loaded", f"no NVIDIA kernel module loaded ({upstream or 'none'} installed)")]
    if upstream and loaded["version"] != upstream:
        return [DriftItem("runtime", "driver loaded",
                          f"reboot pending: driver {upstream} installed, {loaded['version']} loaded")]
    return []


def gpu_health(host, settings: HostSettings) -> list[DriftItem]:
    from operations.facts.gpu_health import GpuHealth

    health = host.get_fact(GpuHealth)
    if health["status"] != "ok":
        return [DriftItem("runtime", "gpus", f"nvidia-smi {health['status']}: {health['error']}")]
    items = []
    if len(health["gpus"]) != settings.gpu_count:
        items.append(DriftItem("runtime", "gpus", f"{len(health['gpus'])} GPUs visible, expected {settings.gpu_count}"))
    for gpu in health["gpus"]:
        if gpu["ecc_uncorrected"]:
            items.append(DriftItem("runtime", "gpus", f"GPU {gpu['index']}: {gpu['ecc_uncorrected']} uncorrected ECC errors"))
        if gpu["throttle"]:
            items.append(DriftItem("runtime", "gpus", f"GPU {gpu['index']} throttled: {', '.join(gpu['throttle'])}"))
    if health["xid_events"]:
        items.append(DriftItem("runtime", "gpus", f"{health['xid_events']} NVIDIA XID events in the kernel log"))
    return items


RESTARTS_ALARM = 3  # restarts since creation that mean a crash loop, not a reboot


def containers(host, settings: HostSettings, fleet: Fleet) -> list[DriftItem]:
    """Managed containers that are not running, crash-looping, or run another image than their tag."""
    from operations.facts.docker import ManagedContainers

    found = host.get_fact(ManagedContainers)
    if found["status"] == "missing":
        return []
    items = []
    for c in found["containers"]:
        check = f"container {c['name']}"
        if c["restarting"] or c["restart_count"] >= RESTARTS_ALARM:
            items.append(DriftItem("runtime", check, f"restarting ({c['restart_count']} restarts)"))
        elif c["status"] != "running":
            items.append(DriftItem("runtime", check, f"{c['status']}, not running"))
        if c["tag_id"] and c["tag_id"] != c["image_id"]:
            items.append(DriftItem("runtime", check, f"runs image {c['image_id'][:19]}, but {c['image']} is now "
                                                     f"{c['tag_id'][:19]} (another image under the pinned tag)"))
    return items


def nccl_in_vllm(host, settings: HostSettings, fleet: Fleet) -> list[DriftItem]:
    """The NCCL the running vLLM loads is the pin (the host's libnccl2 does not decide it)."""
    if not settings.gpu_count:
        return []
    from operations.facts.docker import VllmNcclVersions

    found = host.get_fact(VllmNcclVersions)["containers"]
    return [DriftItem("runtime", f"container {name}", f"loads NCCL {version or 'unknown'}, pinned {settings.nccl_version}")
            for name, version in sorted(found.items()) if version != settings.nccl_version]


def drained_replicas(host, settings: HostSettings, fleet: Fleet) -> list[DriftItem]:
    """Replicas an lb keeps out of rotation (a rollout that did not finish, or a manual drain)."""
    if not host.groups or "lb" not in host.groups:
        return []
    from operations.facts.edge import NginxState

    state = host.get_fact(NginxState, status_port=settings.lb_status_port)
    return [DriftItem("runtime", "nginx upstream", f"replica {name} is drained (out of rotation)")
            for name in state.get("drained", [])]


def distro_floors(settings: HostSettings, groups) -> dict[str, str]:
    """The distribution packages a host of these groups holds at a security floor."""
    floors = {}
    if "gpu_nodes" in groups and settings.docker_engine_min_version:
        floors[settings.docker_engine_package] = settings.docker_engine_min_version
    if "lb" in groups:
        floors.update({k: v for k, v in (("nginx", settings.lb_nginx_min_version),
                                         ("prometheus", settings.prometheus_min_version)) if v})
    return floors


def security_updates(host, settings: HostSettings, fleet: Fleet) -> list[DriftItem]:
    """A held distribution package whose archive now has a newer build: a security update to roll out.

    Its own kind ("security"), apart from plan drift: the host still meets its floor, so a deploy
    would change nothing, but it runs a build the distribution has superseded. The host's package
    lists are as fresh as its last ``apt-get update`` (apt-daily refreshes them on real hosts).
    """
    from operations.distro_packages import behind
    from operations.facts.apt import AptCandidates

    floors = distro_floors(settings, host.groups or ())
    if not floors:
        return []
    found = host.get_fact(AptCandidates, packages=sorted(floors))
    return [DriftItem("security", f"package {name}",
                      f"{state['installed']} installed, the archive has {state['candidate']}: raise the floor "
                      f"(group_data) and roll it out")
            for name, state in sorted(found.items()) if behind(state["installed"], state["candidate"])]


# Checks every host gets; the serving roles add theirs here.
EXTRA_CHECKS: list = [containers, nccl_in_vllm, drained_replicas, security_updates]
