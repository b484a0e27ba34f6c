"""Drift a deploy plan cannot see: what the running host is doing, not what is on its disk.

Each check reads facts (never changes anything) and returns DriftItems. The checks that look at
serving containers use the names the serving operations give them (deploy.py: ``vllm-<node>-<replica>``,
``milvus-standalone``, ``rag-app``).

Every read goes through :func:`gpufleet.host_reads.read`: a read that times out or fails raises
:class:`~gpufleet.host_reads.NotChecked`, which :func:`run` records in ``ctx.problems`` (the host
is then reported "not checked") while the other checks of the host still run. A check that
raises anything else (a bug, output it cannot parse) is recorded the same way, naming the check:
the items the other checks found are kept, with the readings they recorded as seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

from gpufleet.data_drift import data_tier
from gpufleet.drift_item import DriftItem
from gpufleet.drift_counters import Seen
from gpufleet.fleet import Fleet
from gpufleet.host_reads import NotChecked, ReadFailures, read
from gpufleet.settings import HostSettings
from operations.containers import PREVIOUS_SUFFIX
from operations.nvidia import upstream_version


@dataclass
class HostContext:
    """What one host's checks share beyond its settings.

    + specs: ``{container name: ContainerSpec}`` the planned deploy reconciles on this host
    + seen: this host's counters from the last run, and this run's (gpufleet.drift_counters)
    + failures: pyinfra's error lines, to name a read the control side gave up on
    + problems: reads that timed out or failed, checks that raised (filled by :func:`run`): the host
      is not checked
    + image: the node's BuiltImage reading, for the fleet-wide comparison (gpufleet.image_drift)
    + inventory: the inventory file's path (the backups of the data tier are kept per inventory)
    """

    specs: dict = field(default_factory=dict)
    seen: Seen = field(default_factory=Seen)
    failures: ReadFailures | None = None
    problems: list[str] = field(default_factory=list)
    image: tuple | None = None
    inventory: str = ""


def run(host, settings: HostSettings, fleet: Fleet, ctx: HostContext | None = None) -> list[DriftItem]:
    """Every runtime check of the host: the items found; a check that could not finish, for
    whatever reason, is a problem in ``ctx.problems`` (the host is not checked), never an exception."""
    ctx = ctx if ctx is not None else HostContext()
    checks = [partial(driver_loaded, host, settings, ctx), partial(gpu_health, host, settings, ctx),
              partial(kernel_xids, host, settings, ctx)] if settings.gpu_count else []
    checks += [partial(containers, host, settings, fleet, ctx), partial(container_config, host, settings, ctx),
               partial(vllm_image, host, settings, ctx), partial(data_tier, host, settings, fleet, ctx.inventory)]
    checks += [partial(check, host, settings, fleet) for check in EXTRA_CHECKS]
    items: list[DriftItem] = []
    for check in checks:
        try:
            items += check()
        except NotChecked as exc:
            ctx.problems.append(str(exc))
        except Exception as exc:  # noqa: BLE001 - kernel_xids and container_config already recorded
            # this run's readings as seen: raised out of here, the host's result would be replaced by
            # an item-less error and the events they report lost for good.
            ctx.problems.append(f"{check.func.__name__} failed: {type(exc).__name__}: {exc}")
    return items


def driver_loaded(host, settings: HostSettings, ctx: HostContext | None = None) -> list[DriftItem]:
    """The driver package on disk is not the module in the kernel: a reboot is pending."""
    from operations.facts.apt import PackageStates
    from operations.facts.gpu import NvidiaDriver

    failures = ctx.failures if ctx else None
    loaded = read(host, NvidiaDriver, f"the loaded driver ({settings.nvidia_proc_version_path})", failures,
                  path=settings.nvidia_proc_version_path)
    package = settings.nvidia_driver_packages[0]
    installed = read(host, PackageStates, "installed driver packages (dpkg)", failures,
                     packages=[package]).get(package, {}).get("version")
    upstream = upstream_version(installed)
    if not loaded.get("loaded"):
        return [DriftItem("runtime", "driver loaded", f"no NVIDIA kernel module loaded ({upstream or 'none'} installed)")]
    if upstream and loaded["version"] != upstream:
        return [DriftItem("runtime", "driver loaded",
                          f"reboot pending: driver {upstream} installed, {loaded['version']} loaded")]
    return []


def gpu_health(host, settings: HostSettings, ctx: HostContext | None = None) -> list[DriftItem]:
    from operations.facts.gpu_health import GpuHealth

    health = read(host, GpuHealth, "GPU health (nvidia-smi)", ctx.failures if ctx else None)
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
    return items


def kernel_xids(host, settings: HostSettings, ctx: HostContext) -> list[DriftItem]:
    """NVIDIA XID events new since the last run (gpufleet.drift_counters); an unreadable kernel log
    is a read that failed (the host is not checked), never "0 events"."""
    from gpufleet.drift_counters import new_xids, summarize_xids, xid_record
    from operations.facts.kernel_log import KernelXids

    reading = read(host, KernelXids, "the kernel log (XID events)", ctx.failures)
    if not reading["readable"]:
        raise NotChecked(f"could not read the kernel log, so XID events are unknown: {reading['error']}")
    count, events, first = new_xids(ctx.seen.before, reading)
    ctx.seen.now.update(xid_record(ctx.seen.before, reading))
    if not count:
        return []
    which = summarize_xids(events) if events else "lines no longer in the log"
    when = ("since boot (no earlier check of this boot)" if first
            else f"since the last check ({reading['count']} since boot)")
    return [DriftItem("runtime", "gpus", f"{count} new NVIDIA XID events {when}: {which}",
                      [e["text"] for e in events[-10:]])]


RESTARTS_ALARM = 3  # restarts since the last run that mean a crash loop, not one crash
IN_PLACE_FIX = ("its spec label still matches, so a deploy (and --fix) leaves it as it is: put it back with "
                "`docker update` / `docker network connect`, or recreate it (`docker rm -f` it and deploy; for a "
                "vLLM replica, through `gpufleet rollout`)")


def _containers_now(host, ctx: HostContext | None) -> list[dict] | None:
    """Every container as ContainerRuntimes reads it (None: no Docker on the host). The checks of
    state, tags and in-place changes share this one read, answered once from the host's snapshot."""
    from operations.facts.container_runtime import ContainerRuntimes

    found = read(host, ContainerRuntimes, "the containers (Docker's API)", ctx.failures if ctx else None)
    if found["status"] == "missing":
        return None
    if found["status"] != "ok":
        raise NotChecked(f"could not read the containers: {found['error']}")
    return found["containers"]


def containers(host, settings: HostSettings, fleet: Fleet, ctx: HostContext | None = None) -> list[DriftItem]:
    """gpufleet's containers (those with a spec label) that are not running, restarting now, or run
    another image than their tag names now. A container kept stopped for a rollout to roll back to
    (``<name>.gpufleet-previous``, operations/containers.py) is meant to be stopped."""
    found = _containers_now(host, ctx)
    items = []
    for c in found or []:
        if not c["spec"] or c["name"].endswith(PREVIOUS_SUFFIX):
            continue
        check = f"container {c['name']}"
        if c["restarting"]:
            items.append(DriftItem("runtime", check, f"restarting ({c['restart_count']} restarts)"))
        elif c["status"] != "running":
            items.append(DriftItem("runtime", check, f"{c['status']}, not running"))
        if c["tag_id"] and c["tag_id"] != c["image_id"]:
            items.append(DriftItem("runtime", check, f"runs image {c['image_id'][:19]}, but {c['image']} is now "
                                                     f"{c['tag_id'][:19]} (another image under the pinned tag)"))
    return items


def container_config(host, settings: HostSettings, ctx: HostContext) -> list[DriftItem]:
    """Containers changed in place (``docker update``, a network disconnected) against the spec the
    deploy reconciles them to; containers holding GPUs that gpufleet does not run; crash loops
    (restarts new since the last run)."""
    from gpufleet.container_drift import describe_gpus, runtime_differences, unmanaged_gpu_holders
    from gpufleet.drift_counters import new_restarts

    found = _containers_now(host, ctx)
    if found is None:
        return []
    items = []
    restarts = {}
    for c in found:
        if not c["spec"]:
            continue
        restarts[c["id"]] = c["restart_count"]
        new = new_restarts(ctx.seen.before, c["id"], c["restart_count"])
        if new >= RESTARTS_ALARM:
            items.append(DriftItem("runtime", f"container {c['name']}", f"restarted {new} times since the last check "
                                                                        f"({c['restart_count']} since created): crash loop"))
        spec = ctx.specs.get(c["name"])
        if spec is not None and c["spec"] == spec.digest():
            items += [DriftItem("runtime", f"container {c['name']}", f"{why} (changed in place)", [IN_PLACE_FIX])
                      for why in runtime_differences(spec, c)]
    ctx.seen.now["restarts"] = restarts
    items += [DriftItem("runtime", f"container {c['name']}", f"holds GPUs ({describe_gpus(c)}) but is not one "
                                                             "gpufleet runs: it takes GPU memory from the replicas")
              for c in unmanaged_gpu_holders(found)]
    return items


def vllm_image(host, settings: HostSettings, ctx: HostContext) -> list[DriftItem]:
    """The node's vLLM image: built but never checked, or built on an upstream tag that moved since."""
    if "gpu_nodes" not in (host.groups or ()):
        return []
    from gpufleet.image_drift import image_findings
    from operations.facts.images import BuiltImage
    from operations.vllm import image_tag

    tag = image_tag(settings.vllm_image, settings.nccl_version, settings.pip_install_args)
    found = read(host, BuiltImage, "the vLLM image (Docker's API)", ctx.failures, ref=tag,
                 base=settings.vllm_image)
    if found["status"] == "missing":
        return []
    if found["status"] != "ok":
        raise NotChecked(f"could not read the vLLM image: {found['error']}")
    ctx.image = (tag, settings.vllm_image, found)
    return [DriftItem("runtime", "vLLM image", why) for why in image_findings(tag, settings.vllm_image, found)]


def nccl_in_vllm(host, settings: HostSettings, fleet: Fleet) -> list[DriftItem]:
    """The NCCL the running vLLM loads is the pin (the host's libnccl2 does not decide it); a Docker
    that does not answer is a read that failed (the host is not checked), never "no replica"."""
    if not settings.gpu_count:
        return []
    from operations import nccl_checks
    from operations.facts.docker import VllmNcclVersions

    # Only containers not checked in an earlier run of theirs are asked (operations/nccl_checks.py),
    # with the arguments the prefetch read it with: its answer, not a second round trip.
    read_now = read(host, VllmNcclVersions, "NCCL inside the vLLM containers (docker exec)",
                    **VllmNcclVersions.prefetch_kwargs(host.name))
    if read_now["status"] == "missing":
        return []
    if read_now["status"] != "ok":
        raise NotChecked(f"could not read the NCCL inside the vLLM containers: {read_now['error']}")
    nccl_checks.remember(host.name, read_now)  # a failed read would forget every answer kept
    found = read_now["containers"]
    return [DriftItem("runtime", f"container {name}", f"loads NCCL {version or 'unknown'}, pinned {settings.nccl_version}")
            for name, version in sorted(found.items()) if version != settings.nccl_version]


def drained_replicas(host, settings: HostSettings, fleet: Fleet) -> list[DriftItem]:
    """Replicas an lb keeps out of rotation (a rollout that did not finish, or a manual drain)."""
    if not host.groups or "lb" not in host.groups:
        return []
    from operations.facts.edge import NginxState

    state = read(host, NginxState, "nginx's state", status_port=settings.lb_status_port)
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
    found = read(host, AptCandidates, "apt's candidates (apt-cache policy)", packages=sorted(floors))
    return [DriftItem("security", f"package {name}",
                      f"{state['installed']} installed, the archive has {state['candidate']}: raise the floor "
                      f"(group_data) and roll it out")
            for name, state in sorted(found.items()) if behind(state["installed"], state["candidate"])]


# Checks every host gets, ``check(host, settings, fleet)``; the serving roles add theirs here.
EXTRA_CHECKS: list = [nccl_in_vllm, drained_replicas, security_updates]
