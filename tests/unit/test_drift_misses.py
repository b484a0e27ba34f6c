"""The drift catalog, extended by what drift used to miss: each miss is reported, and its nearest
neighbour (the same situation one step to the side) is not.

Hosts here answer with raw command output: every reading goes through the real fact's ``process``
and the real runtime check. Docker's answers are its Engine API documents, in Docker's own field
names and shapes (tests/unit/docker_api_docs.py: HostConfig.RestartPolicy, DeviceRequests, ...);
the kernel log lines follow the NVIDIA driver's XID format (NVIDIA's XID documentation).
"""

from __future__ import annotations

import pytest

from gpufleet.container_drift import runtime_differences
from gpufleet.drift_counters import Seen
from gpufleet.image_drift import fleet_findings, image_findings
from gpufleet.runtime_checks import HostContext, container_config, kernel_xids, vllm_image
from gpufleet.settings import HostSettings
from operations.containers import ContainerSpec
from operations.facts.container_runtime import ContainerRuntimes
from operations.facts.docker import SPEC_LABEL
from operations.facts.docker_api import path_of
from operations.facts.images import BASE_DIGESTS_LABEL, BASE_ID_LABEL, BuiltImage
from operations.facts.kernel_log import KernelXids
from operations.milvus import milvus_specs
from operations.vllm import image_tag, replica_spec

from . import docker_api_docs as docs


class ReplayHost:
    """A host that answers each fact with recorded output lines, processed by the fact itself."""

    def __init__(self, outputs: dict, name: str = "gpu-node-2", groups=("gpu_nodes",)):
        self.outputs, self.name, self.groups = outputs, name, groups
        self.asked: list = []

    def get_fact(self, fact, **kwargs):
        self.asked.append((fact.__name__, kwargs))
        return fact().process(self.outputs[fact])


RC0 = "__gpufleet_rc=0"
VLLM = replica_spec(name="vllm-gpu-node-2-vllm-0", image="gpufleet/vllm-rtx5090:6e73c2a55758470b",
                    model="Qwen/Qwen3-32B-AWQ", served_model_name="qwen3-32b-awq", port=8000, gpus=[0, 1],
                    bind_address="10.0.0.12", tensor_parallel_size=2, max_model_len=32768,
                    gpu_memory_utilization=0.8)
ETCD = milvus_specs("standalone", "milvusdb/milvus:v2.6.11", "10.0.0.12")[0]
GPUS = [{"Driver": "", "Count": 0, "DeviceIDs": ["0", "1"], "Capabilities": [["gpu"]], "Options": {}}]


def inspected_container(name, spec=None, *, restart="unless-stopped", networks=("bridge",), status="running",
                 requests=None, runtime="runc", limits=None, restarts=0, cid=None):
    """One container as Docker's API answers its inspect (the document ContainerRuntimes reads)."""
    return docs.container(name, cid=cid, labels={SPEC_LABEL: spec} if spec else {}, restart=restart,
                          networks=networks, status=status, device_requests=requests, runtime=runtime,
                          limits=limits, restart_count=restarts)


def config_items(containers, specs=None, before=None):
    host = ReplayHost({ContainerRuntimes: docs.answers(*docs.inspected(*containers))})
    ctx = HostContext(specs=specs or {}, seen=Seen(before=before or {}))
    return [f"{i.check}: {i.cause}" for i in container_config(host, HostSettings(), ctx)], ctx


# --------------------------------------------------------------------- changed in place ----------
# (id, spec, the container as inspected now, expected text in one cause or None for "clean")
IN_PLACE = [
    ("restart-policy-updated", VLLM, dict(restart="no"), "restart policy no, the spec says unless-stopped"),
    ("restart-policy-as-spec", VLLM, dict(), None),
    ("memory-limit-added", VLLM, dict(limits={"Memory": 8 * 1024 ** 3}), "memory limit 8 GiB, the spec sets none"),
    ("cpu-limit-added", VLLM, dict(limits={"NanoCpus": 4_000_000_000}), "CPU limit 4 CPUs, the spec sets none"),
    ("memory-limit-the-spec-sets", ContainerSpec(name="app", image="app:1", extra_args=["--memory", "8g"]),
     dict(limits={"Memory": 8 * 1024 ** 3, "MemorySwap": 16 * 1024 ** 3}), None),
    ("memory-limit-changed-from-the-spec", ContainerSpec(name="app", image="app:1", extra_args=["--memory=8g"]),
     dict(limits={"Memory": 4 * 1024 ** 3}), "memory limit 4 GiB, the spec says 8 GiB"),
    ("pids-limit-unlimited-is-unset", VLLM, dict(limits={"PidsLimit": -1}), None),
    ("network-disconnected", ETCD, dict(networks=()), "not connected to network milvus"),
    ("network-connected", ETCD, dict(networks=("milvus",)), None),
    ("extra-network-connected", ETCD, dict(networks=("milvus", "bridge")),
     "connected to network bridge, which the spec does not name"),
]


@pytest.mark.parametrize(("spec", "observed", "expected"), [c[1:] for c in IN_PLACE], ids=[c[0] for c in IN_PLACE])
def test_a_container_changed_in_place_is_reported_against_its_spec(spec, observed, expected):
    found, _ = config_items([inspected_container(spec.name, spec.digest(), **observed)], {spec.name: spec})
    if expected is None:
        assert found == []
    else:
        assert any(expected in f and f.startswith(f"container {spec.name}") for f in found), found
        assert all("changed in place" in f for f in found)


def test_the_spec_compared_is_the_one_the_planned_deploy_reconciles():
    """Planning containers.container (pyinfra's API, an @fake host answering Docker's inspect)
    leaves its spec for drift to compare with: the same object the deploy would run."""
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.connect import connect_all
    from pyinfra.api.operation import add_op

    from operations import containers

    path = path_of("containers", ETCD.name)
    answer = docs.answers((path, 200, inspected_container(ETCD.name, ETCD.digest(), networks=())))
    inventory = Inventory((["@fake/gpu-node-2"], {"fake_delay": 0, "fake_delay_jitter": 0,
                                                   "fake_responses": {path: answer}}))
    state = State(inventory, Config())
    connect_all(state)
    host = inventory.get_host("@fake/gpu-node-2")
    assert containers.planned_specs(host) == {}
    meta = add_op(state, containers.container, spec=ETCD, host=host)
    assert meta[host].will_change is False  # label matches: the plan sees nothing ...
    specs = containers.planned_specs(host)
    assert specs == {ETCD.name: ETCD}
    found, _ = config_items([inspected_container(ETCD.name, ETCD.digest(), networks=())], specs)
    assert found == [f"container {ETCD.name}: not connected to network milvus (changed in place)"]  # ... drift does


def test_a_container_whose_label_no_longer_matches_is_left_to_the_plan():
    # Its spec changed in the repository: the plan recreates it; comparing it with the new spec
    # field by field would report the same change twice.
    found, _ = config_items([inspected_container(VLLM.name, "0123456789abcdef", restart="no")], {VLLM.name: VLLM})
    assert found == []


def test_runtime_differences_name_every_updatable_change_at_once():
    found = runtime_differences(ETCD, {"restart_policy": "on-failure", "restart_retries": 3, "networks": [],
                                       "limits": {"Memory": 512 * 1024 ** 2, "CpusetCpus": "0-3"}})
    assert found == ["restart policy on-failure:3, the spec says unless-stopped",
                     "memory limit 512 MiB, the spec sets none", "CPU set 0-3, the spec sets none",
                     "not connected to network milvus"]


# ------------------------------------------------------------------ state and tags ---------------
def test_gpufleet_containers_stopped_restarting_or_on_a_moved_tag_are_reported_and_the_rest_are_not():
    """One read of every container (ContainerRuntimes) answers the state check: gpufleet's containers
    only (a spec label), never the stopped one a rollout keeps to roll back to."""
    from gpufleet.runtime_checks import containers

    moved = docs.container("milvus", labels={SPEC_LABEL: "77aa"}, image="lab/milvus:2", image_id="sha256:img2")
    kept_tag = docs.container("vllm-gpu-node-2-vllm-0", labels={SPEC_LABEL: "5d9d"}, image="lab/vllm:1",
                              image_id="sha256:img1")
    looping = docs.container("rag-app", labels={SPEC_LABEL: "0a0a"}, status="restarting", restart_count=7)
    stopped = docs.container("etcd", labels={SPEC_LABEL: "0b0b"}, status="exited")
    previous = docs.container("vllm-gpu-node-2-vllm-0.gpufleet-previous", labels={SPEC_LABEL: "0c0c"}, status="exited")
    foreign = docs.container("scratch", status="exited")  # not gpufleet's: its own business
    images = [(path_of("images", "lab/milvus:2"), 200, docs.image("sha256:newer")),
              (path_of("images", "lab/vllm:1"), 200, docs.image("sha256:img1"))]
    host = ReplayHost({ContainerRuntimes: docs.answers(
        *docs.inspected(moved, kept_tag, looping, stopped, previous, foreign), *images)})
    found = [f"{i.check}: {i.cause}" for i in containers(host, HostSettings(), None)]
    assert found == ["container etcd: exited, not running",
                     "container milvus: runs image sha256:img2, but lab/milvus:2 is now sha256:newer (another image "
                     "under the pinned tag)",
                     "container rag-app: restarting (7 restarts)"]
    # The in-place check asks the same read (one command of the host's prefetch answers both).
    container_config(host, HostSettings(), HostContext())
    assert [name for name, _ in host.asked] == ["ContainerRuntimes", "ContainerRuntimes"]


def test_a_host_without_docker_has_no_container_drift():
    from gpufleet.runtime_checks import containers

    host = ReplayHost({ContainerRuntimes: ["__gpufleet_missing"]})
    assert containers(host, HostSettings(), None) == []
    assert container_config(host, HostSettings(), HostContext()) == []


# -------------------------------------------------------------------- unmanaged GPU holders ------
UNMANAGED = [
    ("unlabelled-with-gpus", inspected_container("jupyter", requests=GPUS), "container jupyter: holds GPUs (--gpus device=0,1)"),
    ("unlabelled-nvidia-runtime", inspected_container("legacy", runtime="nvidia"), "container legacy: holds GPUs (nvidia runtime)"),
    ("unlabelled-gpus-all", inspected_container("bench", requests=[{**GPUS[0], "Count": -1, "DeviceIDs": None}]),
     "container bench: holds GPUs (--gpus all)"),
    ("unlabelled-stopped-with-gpus", inspected_container("jupyter", requests=GPUS, status="exited"), None),
    ("unlabelled-without-gpus", inspected_container("node-exporter"), None),
    ("managed-with-gpus", inspected_container(VLLM.name, VLLM.digest(), requests=GPUS), None),
]


@pytest.mark.parametrize(("line", "expected"), [c[1:] for c in UNMANAGED], ids=[c[0] for c in UNMANAGED])
def test_a_container_holding_gpus_that_gpufleet_does_not_run_is_reported(line, expected):
    found, _ = config_items([line], {VLLM.name: VLLM})
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and found[0].startswith(expected), found


def test_a_container_removed_between_the_list_and_its_inspect_is_no_error():
    kept = inspected_container("milvus-etcd")
    fact = ContainerRuntimes().process(docs.answers(*docs.inspected(kept), (f"/containers/{'4f2a' * 16}/json", 404, None)))
    assert fact["status"] == "ok" and [c["name"] for c in fact["containers"]] == ["milvus-etcd"]
    down = ["curl: (7) Failed to connect to docker port 80 after 0 ms: Couldn't connect to server", "__gpufleet_rc=7"]
    assert ContainerRuntimes().process(down)["status"] == "failed"


# ------------------------------------------------------------------------------- restarts --------
def test_restarts_are_reported_when_new_since_the_last_run_and_cleared_after():
    cid = "a" * 64
    line = inspected_container(VLLM.name, VLLM.digest(), restarts=7, cid=cid)
    found, ctx = config_items([line], {VLLM.name: VLLM}, before={"restarts": {cid: 3}})
    assert found == [f"container {VLLM.name}: restarted 4 times since the last check (7 since created): crash loop"]
    assert ctx.seen.now["restarts"] == {cid: 7}
    # The neighbour: the next run, no new restart — the 7 since creation are history.
    found, _ = config_items([line], {VLLM.name: VLLM}, before={"restarts": {cid: 7}})
    assert found == []


def test_a_recreated_container_counts_its_own_restarts_only():
    found, _ = config_items([inspected_container(VLLM.name, VLLM.digest(), restarts=1, cid="b" * 64)], {VLLM.name: VLLM},
                            before={"restarts": {"a" * 64: 40}})
    assert found == []  # one restart of the new container is not a crash loop


# ---------------------------------------------------------------------------------- XIDs ---------
BOOT = "06101ead-7339-414c-8e1b-db2ca070f148"
XID_79 = "[ 8523.121244] NVRM: Xid (PCI:0000:01:00): 79, pid=2207, name=python3, GPU has fallen off the bus."
XID_13 = ("[ 9001.500000] NVRM: Xid (PCI:0000:02:00): 13, pid=3107, name=python3, Graphics SM Warp Exception on "
          "(GPC 0, TPC 1, SM 0): Out Of Range Address")


def kernel_output(*events, boot=BOOT):
    return ([f"__gpufleet_kboot={boot}", "__gpufleet_ksource=dmesg", f"__gpufleet_kcount={len(events)}"]
            + [f"__gpufleet_kevent={e}" for e in events] + [RC0])


def xid_items(output, before):
    ctx = HostContext(seen=Seen(before=before))
    items = kernel_xids(ReplayHost({KernelXids: output}), HostSettings(gpu_count=2), ctx)
    return [i.cause for i in items], ctx


def test_xids_new_since_the_last_run_are_reported_and_old_ones_are_not():
    before = {"boot_id": BOOT, "xid": {"count": 1, "last_t": 8523.121244}}
    found, ctx = xid_items(kernel_output(XID_79, XID_13), before)
    assert found == ["1 new NVIDIA XID events since the last check (2 since boot): Xid 13 on 0000:02:00"]
    assert ctx.seen.now == {"boot_id": BOOT, "xid": {"count": 2, "last_t": 9001.5}}
    found, _ = xid_items(kernel_output(XID_79, XID_13), ctx.seen.now)  # the neighbour: the night after
    assert found == []


def test_xids_of_a_new_boot_or_a_first_run_are_all_new():
    found, _ = xid_items(kernel_output(XID_79), {"boot_id": "0ld-boot", "xid": {"count": 5, "last_t": 99999.0}})
    assert found == ["1 new NVIDIA XID events since boot (no earlier check of this boot): Xid 79 on 0000:01:00"]
    found, _ = xid_items(kernel_output(XID_79, XID_79), {})
    assert found[0].startswith("2 new NVIDIA XID events since boot") and "Xid 79 on 0000:01:00 (x2)" in found[0]


def test_an_unreadable_kernel_log_is_not_zero_events():
    from gpufleet.host_reads import NotChecked

    unreadable = [f"__gpufleet_kboot={BOOT}",
                  "__gpufleet_kunreadable=dmesg (exit 1): dmesg: read kernel buffer failed: Operation not permitted; "
                  "journalctl -k -b: No journal files were found.", RC0]
    with pytest.raises(NotChecked, match="could not read the kernel log.*Operation not permitted"):
        xid_items(unreadable, {})
    found, _ = xid_items(kernel_output(), {})  # the neighbour: readable, and no XID at all
    assert found == []


# --------------------------------------------------------------------------- vLLM image ----------
SETTINGS = HostSettings(gpu_count=2)
TAG = image_tag(SETTINGS.vllm_image, SETTINGS.nccl_version, SETTINGS.pip_install_args)
BASE_ID, NEW_BASE_ID = "sha256:51ac" + "0" * 60, "sha256:77fe" + "0" * 60
BASE_LAYERS, NEW_LAYERS = ["sha256:l1", "sha256:l2"], ["sha256:l1", "sha256:l7"]


def image_output(*, checked=True, recorded=BASE_ID, base_id=BASE_ID, base_layers=BASE_LAYERS, base=True):
    labels = {"io.gpufleet.inputs": TAG.rsplit(":", 1)[1],
              **({BASE_ID_LABEL: recorded, BASE_DIGESTS_LABEL: "vllm/vllm-openai@sha256:e1d0"} if recorded else {})}
    image_id = "sha256:9a" + "0" * 62
    built = docs.image(image_id, labels=labels, layers=BASE_LAYERS + ["sha256:nccl"])
    upstream = docs.image(base_id, digests=["vllm/vllm-openai@sha256:f00d"], layers=base_layers) if base else None
    lines = docs.answers((path_of("images", TAG), 200, built),
                         (path_of("images", SETTINGS.vllm_image), 200 if base else 404, upstream))
    # The check's markers, listed after the answers (BuiltImage's command); another image's marker too.
    markers = [f"checked={'0f' * 32}.json"] + ([f"checked={image_id.removeprefix('sha256:')}.json"] if checked else [])
    return lines[:-1] + markers + lines[-1:]


IMAGE = [
    ("built-never-checked", dict(checked=False), "was built but never passed its NCCL/architecture check"),
    ("built-and-checked", dict(), None),
    ("upstream-tag-moved-recorded", dict(base_id=NEW_BASE_ID, base_layers=NEW_LAYERS),
     "upstream tag vllm/vllm-openai:v0.21.0 is now sha256:77fe"),
    ("upstream-tag-moved-unrecorded-build", dict(recorded=None, base_id=NEW_BASE_ID, base_layers=NEW_LAYERS),
     "was built on another image: the tag was re-pushed upstream"),
    ("upstream-tag-as-built-unrecorded", dict(recorded=None), None),
    ("upstream-not-on-the-node", dict(base=False), None),
]


@pytest.mark.parametrize(("kwargs", "expected"), [c[1:] for c in IMAGE], ids=[c[0] for c in IMAGE])
def test_the_vllm_image_unchecked_or_built_on_a_moved_tag_is_reported(kwargs, expected):
    host = ReplayHost({BuiltImage: image_output(**kwargs)})
    found = [i.cause for i in vllm_image(host, SETTINGS, HostContext())]
    assert host.asked == [("BuiltImage", {"ref": TAG, "base": SETTINGS.vllm_image})]
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and expected in found[0], found


def test_a_vllm_image_pinned_by_digest_cannot_have_moved():
    ref = "vllm/vllm-openai:v0.21.0@sha256:" + "e" * 64
    fact = BuiltImage().process(image_output(base_id=NEW_BASE_ID, base_layers=NEW_LAYERS))
    assert image_findings(TAG, ref, fact) == []


def test_nodes_holding_one_tag_on_different_upstream_images_are_named():
    old, new = (BuiltImage().process(image_output(recorded=r)) for r in (BASE_ID, NEW_BASE_ID))
    ref = SETTINGS.vllm_image
    found = fleet_findings({"gpu-node-1": (TAG, ref, old), "gpu-node-2": (TAG, ref, old),
                            "gpu-node-3": (TAG, ref, new)})
    assert list(found) == ["gpu-node-3"]
    assert "on gpu-node-1, gpu-node-2 on sha256:51ac" in found["gpu-node-3"] and "re-pushed" in found["gpu-node-3"]
    # The neighbour: the same upstream image everywhere.
    assert fleet_findings({"gpu-node-1": (TAG, ref, old), "gpu-node-3": (TAG, ref, old)}) == {}


# ------------------------------------------------------------- a check that breaks ----------------
def test_a_check_that_breaks_keeps_the_xids_read_before_it_reported_and_the_host_not_checked(monkeypatch, tmp_path):
    """kernel_xids records this run's reading as seen; a later check that raises anything (a bug,
    output it cannot parse) must not throw away the result that reports those events, or the next
    run would count them as already seen."""
    from types import SimpleNamespace

    from gpufleet import runtime_checks
    from gpufleet.drift import check_host
    from gpufleet.drift_counters import CounterStore

    def container_config(*args):  # a check after kernel_xids that breaks
        raise KeyError("restart_count")

    for name in ("driver_loaded", "gpu_health", "containers", "vllm_image", "data_tier"):
        monkeypatch.setattr(runtime_checks, name, lambda *args: [])
    monkeypatch.setattr(runtime_checks, "container_config", container_config)
    monkeypatch.setattr(runtime_checks, "EXTRA_CHECKS", [])
    host = ReplayHost({KernelXids: kernel_output(XID_79)})
    plan = SimpleNamespace(state=SimpleNamespace(failed_hosts=set()), refusals={}, ops=lambda h: [],
                           fleet=SimpleNamespace(hosts={host.name: SimpleNamespace(settings=SETTINGS)}))
    store = CounterStore(tmp_path / "counters.json")
    result = check_host(plan, host, HostContext(seen=store.host(host.name)))
    assert not result.checked and result.error == "container_config failed: KeyError: 'restart_count'"
    assert [i.cause for i in result.items] == [
        "1 new NVIDIA XID events since boot (no earlier check of this boot): Xid 79 on 0000:01:00"]
    store.save()  # what is saved as seen is what this result reported
    assert CounterStore(tmp_path / "counters.json").host(host.name).before["xid"]["count"] == 1


def test_a_host_whose_check_raised_keeps_the_last_runs_counters(monkeypatch, tmp_path):
    """Whatever raises out of a host's check, its result is replaced by an item-less error: the
    readings its checks recorded as seen are then not saved, so the next run reports them."""
    from contextlib import contextmanager
    from types import SimpleNamespace

    from gpufleet import drift, remote
    from gpufleet.drift_counters import CounterStore

    path = tmp_path / "counters.json"
    last = CounterStore(path)
    last.host("gpu-node-2").now.update({"boot_id": BOOT, "xid": {"count": 1, "last_t": 8523.121244}})
    last.save()
    plan = SimpleNamespace(hosts=[SimpleNamespace(name="gpu-node-2")], unreachable=[], errors={}, state=None)

    @contextmanager
    def planned(*args, **kwargs):
        yield plan

    def check_host(plan, host, ctx):
        ctx.seen.now.update({"boot_id": BOOT, "xid": {"count": 2, "last_t": 9001.5}})
        raise RuntimeError("broke after reading the kernel log")

    def run_parallel(state, hosts, work):
        try:
            return {h.name: work(h) for h in hosts}
        except RuntimeError as exc:
            return {h.name: exc for h in hosts}

    monkeypatch.setattr(drift, "planned", planned)
    monkeypatch.setattr(drift, "check_host", check_host)
    monkeypatch.setattr(remote, "run_parallel", run_parallel)
    report = drift.check("inventory/prod.py", counters=path)
    (host,) = report.hosts
    assert not host.checked and not host.items and "broke after reading the kernel log" in host.error
    assert CounterStore(path).host("gpu-node-2").before["xid"] == {"count": 1, "last_t": 8523.121244}


def test_nccl_in_vllm_is_not_checked_when_docker_does_not_answer():
    """A failed read of the containers is "not checked", never "no vLLM container, nothing to compare"."""
    from gpufleet.host_reads import NotChecked
    from gpufleet.runtime_checks import nccl_in_vllm
    from operations.facts.docker import VllmNcclVersions

    down = ["curl: (7) Failed to connect to docker port 80 after 0 ms: Couldn't connect to server", "__gpufleet_rc=7"]
    with pytest.raises(NotChecked, match="could not read the NCCL inside the vLLM containers: curl: \\(7\\) Failed to connect"):
        nccl_in_vllm(ReplayHost({VllmNcclVersions: down}), SETTINGS, None)
    # The neighbours: Docker not installed (nothing runs), and a replica that loads the pin.
    assert nccl_in_vllm(ReplayHost({VllmNcclVersions: ["__gpufleet_missing"]}), SETTINGS, None) == []
    key = f"{'c' * 64}@sha256:9a9a@2026-12-06T11:21:46Z"
    ok = [f"nccl|vllm-gpu-node-2-vllm-0|{SETTINGS.nccl_version}|{key}", RC0]
    assert nccl_in_vllm(ReplayHost({VllmNcclVersions: ok}), SETTINGS, None) == []
