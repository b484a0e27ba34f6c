"""The rollout's policy and state file, and the serving gate, without a lab."""

import json
import re

import pytest
from pyinfra.api import OperationError

import operations.serving_gate as gate_module
from gpufleet.rollout_steps import changes_milvus as REAL_CHANGES_MILVUS
from gpufleet.rollout_steps import REFUSED as REAL_REFUSED
from gpufleet.rollout_steps import needs_prepare as REAL_NEEDS_PREPARE
from gpufleet.rollout import (DONE, FAILED, GPU_STACK, PENDING, REPLICAS, NodeRollout, Rollout, RolloutError,
                              check_capacity, last_unfinished, make_batches)


def test_canary_first_then_batches_of_max_unavailable():
    nodes = ["n1", "n2", "n3", "n4", "n5"]
    assert make_batches(nodes, canary=1, max_unavailable=2) == [["n1"], ["n2", "n3"], ["n4", "n5"]]
    assert make_batches(nodes, canary=0, max_unavailable=3) == [["n1", "n2", "n3"], ["n4", "n5"]]
    assert make_batches(["n1"], canary=2, max_unavailable=1) == [["n1"]]
    with pytest.raises(RolloutError):
        make_batches(nodes, canary=1, max_unavailable=0)


def test_a_batch_that_would_leave_no_live_replica_is_refused():
    replicas = {"n1": ["n1-vllm-0"], "n2": ["n2-vllm-0"]}
    check_capacity([["n1"], ["n2"]], replicas, ["n1-vllm-0", "n2-vllm-0"])
    with pytest.raises(RolloutError, match="no live replica"):
        check_capacity([["n1", "n2"]], replicas, ["n1-vllm-0", "n2-vllm-0"])


def test_capacity_counts_the_replicas_running_now_not_the_inventory():
    replicas = {"n1": ["n1-vllm-0"], "n2": ["n2-vllm-0"], "n3": ["n3-vllm-0"]}
    check_capacity([["n1"], ["n2", "n3"]], replicas, ["n1-vllm-0", "n2-vllm-0", "n3-vllm-0"])
    # n1's replica is down: draining n2 and n3 together would leave nothing serving.
    with pytest.raises(RolloutError, match=r"live now: n2-vllm-0, n3-vllm-0"):
        check_capacity([["n1"], ["n2", "n3"]], replicas, ["n2-vllm-0", "n3-vllm-0"])


def test_gpu_stack_changes_are_never_rolled_back_automatically():
    assert NodeRollout("n1", changes=["vLLM replica n1-vllm-0"], kind=REPLICAS).rollback_allowed
    assert not NodeRollout("n1", changes=["NVIDIA driver (open modules)"], kind=GPU_STACK).rollback_allowed


def test_the_refusals_say_what_a_rollout_must_do_by_type(monkeypatch):
    from operations import docker_daemon as docker

    monkeypatch.setattr(gate_module, "host", FakeHost(None, ["vllm-gpu-node-1-vllm-0"]))
    with pytest.raises(gate_module.ServingInterruption) as refused:
        gate_module.ServingGate().check(Meta(True), "vLLM replica x (recreate)", kind=gate_module.REPLICAS)
    assert (refused.value.what, refused.value.kind) == ("vLLM replica x (recreate)", REPLICAS)
    with pytest.raises(gate_module.ServingInterruption) as refused:
        gate_module.ServingGate().check(Meta(True), "NVIDIA driver (open modules)")
    assert refused.value.kind == GPU_STACK

    class Host:  # GPU containers run, no CDI: a daemon-reload would take their GPUs
        def get_fact(self, fact):
            return {"GpuContainers": {"status": "ok", "containers": ["vllm-a"]}, "DockerDaemonConfig": {"config": {}}}[fact.__name__]

    monkeypatch.setattr(docker, "host", Host())
    with pytest.raises(gate_module.ServingInterruption) as refused:
        docker.refuse_daemon_reload_under_gpu_containers("installing nvidia-open=580.105.08-1")
    assert refused.value.kind == GPU_STACK and "vllm-a" in str(refused.value)


def test_state_file_round_trip_and_resume_finds_the_unfinished_one(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUFLEET_STATE_DIR", str(tmp_path))
    done = Rollout("r-1", "inventory/lab.py", {}, "me@ctl", "t0", 1, 1, {"n1": NodeRollout("n1", state=DONE)},
                   [["n1"]], started=1.0, finished=2.0, exit_code=0)
    open_one = Rollout("r-2", "inventory/lab.py", {"vllm_max_model_len": 384}, "me@ctl", "t1", 1, 1,
                       {"n1": NodeRollout("n1", state=FAILED, history=[("draining", 1.0)]),
                        "n2": NodeRollout("n2", state=PENDING)}, [["n1"], ["n2"]], started=3.0)
    done.save()
    open_one.save()
    found = last_unfinished("inventory/lab.py")
    assert found is not None and found.id == "r-2"
    assert found.nodes["n1"].history == [("draining", 1.0)] and found.overrides == {"vllm_max_model_len": 384}
    assert last_unfinished("inventory/prod.py") is None
    assert json.loads((tmp_path / "rollouts" / "r-2.json").read_text())["nodes"]["n2"]["state"] == PENDING


class FakeHost:
    name = "gpu-node-1"

    def __init__(self, lock, live):
        self.facts = {"RolloutLock": lock, "LiveReplicas": live}

    def get_fact(self, fact):
        return self.facts[fact.__name__]


class Meta:
    def __init__(self, changes):
        self.will_change = changes


def test_the_gate_refuses_disruption_of_live_replicas_outside_a_rollout(monkeypatch):
    monkeypatch.setattr(gate_module, "host", FakeHost(None, ["vllm-gpu-node-1-vllm-0"]))
    gate = gate_module.ServingGate()
    gate.check(Meta(False), "vLLM replica")  # nothing changes: nothing to refuse
    with pytest.raises(OperationError, match="gpufleet rollout"):
        gate.check(Meta(True), "vLLM replica gpu-node-1-vllm-0 (recreate)")
    gate_module.ServingGate(allow=True).check(Meta(True), "maintenance window")


def test_the_gate_lets_fresh_nodes_and_the_lock_holder_through(monkeypatch):
    monkeypatch.setattr(gate_module, "host", FakeHost(None, []))
    gate_module.ServingGate().check(Meta(True), "fresh node")
    lock = {"id": "r-20261204-1", "holder": "sre@ctl", "since": "2026-12-04T18:00:00Z", "state": "draining"}
    monkeypatch.setattr(gate_module, "host", FakeHost(lock, ["vllm-gpu-node-1-vllm-0"]))
    gate_module.ServingGate(rollout_id="r-20261204-1").check(Meta(True), "the rollout's own update")
    # Locked for an in-place change (planned when it served nothing), serving again by its turn:
    # the lock alone lets no interruption through.
    monkeypatch.setattr(gate_module, "host", FakeHost({**lock, "state": "updating"}, ["vllm-gpu-node-1-vllm-0"]))
    with pytest.raises(gate_module.ServingInterruption, match="would interrupt serving"):
        gate_module.ServingGate(rollout_id="r-20261204-1").check(Meta(True), "vLLM replica x (recreate)")
    with pytest.raises(OperationError, match=r"held by rollout r-20261204-1 \(sre@ctl, since 2026-12-04T18:00:00Z"):
        gate_module.ServingGate()
    with pytest.raises(OperationError, match="held by rollout"):
        gate_module.ServingGate(rollout_id="r-other")


MILVUS_HOST = "db-1"  # the vector_db host, a host of its own


class FakeSteps:
    """The rollout's steps, recorded; ``fail`` names a step and a node that fail."""

    class StepError(Exception):
        pass

    REFUSED = REAL_REFUSED

    def __init__(self, fail=()):
        self.fail = set(fail)
        self.calls = []

    def _do(self, step, name):
        self.calls.append((step, name))
        if (step, name) in self.fail:
            raise self.StepError(f"{step} failed on {name}")

    def needs_prepare(self, changes, kind=""):
        return REAL_NEEDS_PREPARE(changes, kind)

    def prepare(self, rollout, nodes):
        self.calls.append(("prepare", tuple(nodes)))
        return {n: None for n in nodes}

    def lock(self, rollout, name, state):
        self.lock_states = {**getattr(self, "lock_states", {}), name: state}
        self._do("lock", name)
        return {"retiring": self.retiring_replicas(rollout, name), "before": self.container_ids(rollout, name)}

    def unlock(self, rollout, name, forget_previous=False):
        if forget_previous:
            self.calls.append(("forget_previous", name))
        self._do("unlock", name)

    def retiring_replicas(self, rollout, name):
        if name == MILVUS_HOST:  # no replicas there (rollout_steps._retiring_on)
            return []
        return [f"{name}-vllm-old"]  # a replica removed from the inventory, still running

    def drain(self, rollout, name, retiring=()):
        self._do("drain", name)
        assert list(retiring) == [f"{name}-vllm-old"]  # drained with the node

    def undrain(self, rollout, name, retiring=(), check=True):
        self.undrain_checked = getattr(self, "undrain_checked", []) + [(name, check)]
        self._do("undrain", name)
        self.undrained_retiring = list(retiring)

    def fleet_live_replicas(self, rollout):
        self.calls.append(("fleet_live_replicas", "*"))
        return getattr(self, "live", {n: [f"{n}-vllm-0"] for n in rollout.nodes if n != MILVUS_HOST})

    def container_ids(self, rollout, name):
        return {} if name == MILVUS_HOST else {f"vllm-{name}-vllm-0": "old"}

    def update(self, rollout, names):
        self.calls.append(("update", tuple(names)))
        return {n: (("update", n) not in self.fail, "the deploy failed") for n in names}

    def validate(self, rollout, name):
        self.calls.append(("validate", name))
        return ("validate", name) not in self.fail, "not ready"

    def rollback(self, rollout, name, before, retiring=()):
        self._do("rollback", name)
        self.rolled_back_to = {**getattr(self, "rolled_back_to", {}), name: dict(before)}
        assert list(retiring) == [f"{name}-vllm-old"]

    def stop_gpu_containers(self, rollout, name):
        self._do("stop_gpu_containers", name)

    def changes_milvus(self, changes):
        return REAL_CHANGES_MILVUS(changes)  # the real test: the fake stands in for the module

    def back_up_milvus(self, rollout):
        self._do("back_up_milvus", "fleet")
        return "/backups/lab/20261205T000000Z", {"docs": 120}

    def milvus_rows_kept(self, rollout, before, backup_dir):
        self.calls.append(("milvus_rows_kept", tuple(before.items())))
        if ("milvus_rows_kept", "fleet") in self.fail:
            return False, f"Milvus lost rows across the change (docs: 120 -> 7); the backup is {backup_dir}"
        return True, ""


def _rollout(tmp_path, monkeypatch, changes=("vLLM replica x",), kind=REPLICAS):
    monkeypatch.setenv("GPUFLEET_STATE_DIR", str(tmp_path))
    nodes = {n: NodeRollout(n, changes=list(changes), kind=kind) for n in ("n1", "n2")}
    return Rollout("r-test", "inventory/lab.py", {}, "me@ctl", "t0", 1, 1, nodes, [["n1"], ["n2"]])


def _run(rollout, fake, monkeypatch):
    import sys

    import gpufleet
    from gpufleet import rollout as rl

    # Runner.run imports gpufleet.rollout_steps when it starts: hand it the fake instead.
    monkeypatch.setitem(sys.modules, "gpufleet.rollout_steps", fake)
    monkeypatch.setattr(gpufleet, "rollout_steps", fake, raising=False)
    return rl.Runner(rollout, say=lambda line: None).run()


def test_every_node_goes_through_the_states_in_order(tmp_path, monkeypatch):
    r = _rollout(tmp_path, monkeypatch)
    fake = FakeSteps()
    assert _run(r, fake, monkeypatch) == 0
    assert [s for s, _ in r.nodes["n1"].history] == ["draining", "updating", "validating", "undraining", "done"]
    n1 = [c for c in fake.calls if c[1] in ("n1", ("n1",))]
    assert n1 == [("lock", "n1"), ("drain", "n1"), ("update", ("n1",)), ("validate", "n1"),
                  ("undrain", "n1"), ("forget_previous", "n1"), ("unlock", "n1")]
    assert fake.calls.index(("unlock", "n1")) < fake.calls.index(("lock", "n2"))  # one node at a time
    # The replica removed from the inventory, drained with the node, is undrained (dropped) once retired.
    assert r.nodes["n2"].retiring == ["n2-vllm-old"] and fake.undrained_retiring == ["n2-vllm-old"]


def test_a_failed_canary_is_rolled_back_undrained_and_stops_the_rollout(tmp_path, monkeypatch):
    r = _rollout(tmp_path, monkeypatch)
    fake = FakeSteps(fail={("validate", "n1")})
    assert _run(r, fake, monkeypatch) == 2
    assert r.nodes["n1"].state == "rolled-back" and r.nodes["n2"].state == "pending"
    assert ("rollback", "n1") in fake.calls and ("undrain", "n1") in fake.calls
    assert fake.undrain_checked == [("n1", False)]  # rolled back: put back, not judged
    assert not any(c[1] == "n2" for c in fake.calls)
    assert last_unfinished("inventory/lab.py").id == "r-test"  # --resume finds it


def test_a_driver_change_stops_the_gpu_containers_after_draining(tmp_path, monkeypatch):
    r = _rollout(tmp_path, monkeypatch, changes=("NVIDIA driver (open modules)",), kind=GPU_STACK)
    fake = FakeSteps()
    assert _run(r, fake, monkeypatch) == 0
    n1 = [c[0] for c in fake.calls if c[1] in ("n1", ("n1",))]
    assert n1 == ["lock", "drain", "stop_gpu_containers", "update", "validate", "undrain", "forget_previous", "unlock"]
    replica_only = _rollout(tmp_path, monkeypatch)
    fake = FakeSteps()
    assert _run(replica_only, fake, monkeypatch) == 0
    assert not any(c[0] == "stop_gpu_containers" for c in fake.calls)  # a recreate stops its own container


def test_a_driver_change_that_fails_stays_drained_and_is_never_rolled_back(tmp_path, monkeypatch):
    r = _rollout(tmp_path, monkeypatch, changes=("NVIDIA driver (open modules)",), kind=GPU_STACK)
    fake = FakeSteps(fail={("validate", "n1")})
    assert _run(r, fake, monkeypatch) == 2
    assert r.nodes["n1"].state == "failed" and "stays drained and locked" in r.nodes["n1"].error
    assert ("rollback", "n1") not in fake.calls and ("undrain", "n1") not in fake.calls
    assert not any(c[1] == "n2" for c in fake.calls if c[0] != "prepare")


def test_a_drain_that_times_out_puts_the_node_back_unchanged(tmp_path, monkeypatch):
    r = _rollout(tmp_path, monkeypatch)
    fake = FakeSteps(fail={("drain", "n1")})
    assert _run(r, fake, monkeypatch) == 2
    assert r.nodes["n1"].state == "failed"
    assert ("update", ("n1",)) not in fake.calls and ("undrain", "n1") in fake.calls
    # Put back unchanged: undrained and unlocked without asking the lbs to serve what is not there yet.
    assert fake.undrain_checked == [("n1", False)] and ("unlock", "n1") in fake.calls


def test_resume_skips_done_nodes(tmp_path, monkeypatch):
    r = _rollout(tmp_path, monkeypatch)
    r.nodes["n1"].state = "done"
    fake = FakeSteps()
    assert _run(r, fake, monkeypatch) == 0
    assert not any(c[1] == "n1" for c in fake.calls if c[0] != "prepare")


def test_the_nodes_of_a_batch_are_converged_by_one_deploy_and_a_failure_stays_theirs(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUFLEET_STATE_DIR", str(tmp_path))
    names = ("n1", "n2", "n3")
    nodes = {n: NodeRollout(n, changes=["vLLM replica x"], kind=REPLICAS) for n in names}
    r = Rollout("r-batch", "inventory/lab.py", {}, "me@ctl", "t0", 0, 2, nodes, [["n1", "n2"], ["n3"]])
    fake = FakeSteps(fail={("validate", "n2")})
    assert _run(r, fake, monkeypatch) == 2
    assert ("update", ("n1", "n2")) in fake.calls  # one deploy for the batch
    # Both drained before the deploy, each validated and undrained after it.
    assert fake.calls.index(("drain", "n2")) < fake.calls.index(("update", ("n1", "n2"))) < fake.calls.index(
        ("validate", "n1"))
    assert r.nodes["n1"].state == "done" and r.nodes["n2"].state == "rolled-back"
    assert r.nodes["n3"].state == "pending" and not any(c[1] == "n3" for c in fake.calls if c[0] != "prepare")


def test_the_rollout_bench_reads_docker_times_and_the_state_history():
    from gpufleet.bench_rollout import _epoch, phases

    # Docker's RFC 3339 with nanoseconds; 2026-12-04T21:00:00Z is 1796418000.
    assert abs(_epoch("2026-12-04T21:00:01.250000000Z") - 1796418001.25) < 1e-6
    report = {"nodes": {"n1": {"history": [["draining", 0.3], ["updating", 3.3], ["validating", 150.3],
                                           ["undraining", 155.4], ["done", 156.0]]}}}
    assert phases(report) == {"n1": {"draining": 3.0, "updating": 147.0, "validating": 5.1, "undraining": 0.6}}


@pytest.mark.parametrize("fact", ["LiveReplicas", "ReplicaContainers"])
def test_a_docker_that_fails_is_no_answer_never_no_replicas(tmp_path, fact):
    import shutil
    import subprocess

    from pyinfra.api.exceptions import FactProcessError

    from operations.facts import rollout as facts

    cls = getattr(facts, fact)
    command = cls.command
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sh", "timeout"):  # what the read's time limit runs, and nothing of Docker
        (bin_dir / name).symlink_to(shutil.which(name))
    no_docker = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, env={"PATH": str(bin_dir)})
    assert no_docker.returncode == 0 and no_docker.stdout == "__gpufleet_rc=0\n"  # a fresh host: nothing runs
    assert cls().process(no_docker.stdout.splitlines()) == []
    docker = bin_dir / "docker"
    docker.write_text("#!/bin/sh\nexit 0\n")  # installed; the read asks the daemon's socket, where nothing answers
    docker.chmod(0o755)
    systemctl = bin_dir / "systemctl"  # a booted host whose docker.service is active, yet docker fails
    systemctl.write_text('#!/bin/sh\ncase "$1" in is-system-running) echo running;; is-active) exit 0;; esac\n')
    systemctl.chmod(0o755)
    from operations.facts.docker_api import SOCKET

    broken = subprocess.run(["/bin/sh", "-c", command.replace(SOCKET, str(tmp_path / "docker.sock"))],
                            capture_output=True, text=True, env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert broken.returncode == 0 and broken.stdout.splitlines()[-1] == "__gpufleet_rc=7"  # curl: nothing listens
    with pytest.raises(FactProcessError, match=r"^the read failed \(exit 7\)"):
        cls().process(broken.stdout.splitlines())  # pyinfra fails the fact, and the deploy that asked


def test_a_node_that_fails_at_its_lock_gives_the_lock_back_and_a_resumed_node_is_never_undrained_half_updated(
        tmp_path, monkeypatch):
    r = _rollout(tmp_path, monkeypatch, changes=("NVIDIA driver (open modules)",), kind=GPU_STACK)
    fake = FakeSteps(fail={("container_ids", "n1")})
    fake.container_ids = lambda rollout, name: fake._do("container_ids", name)
    r.nodes["n1"].history = [("draining", 1.0), ("updating", 2.0), ("failed", 3.0)]  # a resumed node
    assert _run(r, fake, monkeypatch) == 2
    assert r.nodes["n1"].state == "failed" and ("undrain", "n1") not in fake.calls  # half updated: stays drained
    in_place = _rollout(tmp_path, monkeypatch)
    for node in in_place.nodes.values():
        node.kind = ""
    fake = FakeSteps(fail={("container_ids", "n1")})
    fake.container_ids = lambda rollout, name: fake._do("container_ids", name)
    assert _run(in_place, fake, monkeypatch) == 2
    assert ("unlock", "n1") in fake.calls  # its lock was given back


def test_a_resumed_node_left_drained_keeps_its_lock_when_it_fails_again_and_the_lock_says_what_happens(
        tmp_path, monkeypatch):
    # Failed while draining, and its undrain failed too: still drained on the lbs. Failing again at
    # its lock on --resume must not hand the lock back as if nothing had happened to it.
    r = _rollout(tmp_path, monkeypatch)
    fake = FakeSteps(fail={("container_ids", "n1")})
    fake.container_ids = lambda rollout, name: fake._do("container_ids", name)
    r.nodes["n1"].state, r.nodes["n1"].history = "failed", [("draining", 1.0), ("failed", 2.0)]
    assert _run(r, fake, monkeypatch) == 2
    assert ("unlock", "n1") not in fake.calls
    # The node lock names the state the rollout is in there: never "draining" for a host changed in place.
    in_place = _rollout(tmp_path, monkeypatch, kind="")
    fake = FakeSteps()
    assert _run(in_place, fake, monkeypatch) == 0
    assert fake.lock_states == {"n1": "updating", "n2": "updating"}


def test_a_rollout_that_takes_nothing_live_out_is_never_refused():
    # A full outage: nothing runs, so draining takes nothing out; the repairing rollout may run.
    check_capacity([["n1", "n2"]], {"n1": [], "n2": []}, [])
    # Only the batch's own replica is live and it is changed in place (never drained): allowed too.
    check_capacity([["n1"]], {}, ["n1-vllm-0"])


def test_a_stopped_docker_service_without_live_restore_runs_nothing(tmp_path):
    """dockerd stopped by systemd: its containers stopped with it, so "none" is the truth, and the
    deploy that starts Docker again is not blocked by a fact that cannot ask."""
    import subprocess

    from operations.facts.rollout import LiveReplicas

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "systemctl").write_text('#!/bin/sh\ncase "$1" in is-system-running) echo degraded;; is-active) exit 3;; esac\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    run = subprocess.run(["/bin/sh", "-c", LiveReplicas.command], capture_output=True, text=True,
                         env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert run.returncode == 0 and run.stdout == "__gpufleet_rc=0\n"
    assert LiveReplicas().process(run.stdout.splitlines()) == []


def test_a_state_file_from_before_kinds_resumes_with_the_kind_it_meant(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUFLEET_STATE_DIR", str(tmp_path))
    old = {"id": "r-old", "inventory": "inventory/lab.py", "overrides": {}, "holder": "me@ctl", "since": "t0",
           "canary": 1, "max_unavailable": 1, "batches": [["n1"], ["n2"], ["n3"]], "started": 1.0,
           "finished": None, "exit_code": None,
           "nodes": {"n1": {"name": "n1", "changes": ["NVIDIA driver (open modules)"], "disruptive": True,
                            "state": "failed", "error": None, "history": [], "before": {}},
                     "n2": {"name": "n2", "changes": ["vLLM replica x"], "disruptive": True, "state": "pending",
                            "error": None, "history": [], "before": {}},
                     "n3": {"name": "n3", "changes": ["Base packages"], "disruptive": False, "state": "pending",
                            "error": None, "history": [], "before": {}}}}
    r = Rollout.from_dict(old)
    assert (r.nodes["n1"].kind, r.nodes["n1"].rollback_allowed) == (GPU_STACK, False)
    assert (r.nodes["n2"].kind, r.nodes["n2"].disruptive) == (REPLICAS, True)
    assert (r.nodes["n3"].kind, r.nodes["n3"].disruptive) == ("", False)


def test_undrain_is_done_only_when_every_lb_serves_the_nodes_replicas():
    from gpufleet.rollout_steps import held_back

    live = {"drained": [], "members": [{"name": "n1-vllm-0", "address": "10.0.0.1", "port": 8000}]}
    assert held_back(["n1-vllm-0"], live) == []
    joining = {"drained": [], "members": [{"name": "n1-vllm-0", "joining": True}]}
    assert held_back(["n1-vllm-0"], joining) == [
        "n1-vllm-0 is down (joining): it does not answer /health from this load balancer"]
    assert held_back(["n1-vllm-0"], {**live, "drained": ["n1-vllm-0"]}) == ["n1-vllm-0 is still drained"]
    assert held_back(["n1-vllm-1"], live) == ["n1-vllm-1 is not in the nginx config"]


def test_a_node_whose_undrain_leaves_a_replica_down_fails_and_stays_locked(tmp_path, monkeypatch):
    r = _rollout(tmp_path, monkeypatch)
    fake = FakeSteps(fail={("undrain", "n1")})
    assert _run(r, fake, monkeypatch) == 2
    assert r.nodes["n1"].state == "failed" and "undrain failed on n1" in r.nodes["n1"].error
    assert "--resume" in r.nodes["n1"].error and ("unlock", "n1") not in fake.calls
    assert not any(c[1] == "n2" for c in fake.calls if c[0] != "prepare")


def test_a_node_put_back_unchanged_forgets_what_ran_there(tmp_path, monkeypatch):
    # The drain failed: the node is undrained and unlocked, nothing was updated. A --resume reads
    # its containers again (a deploy by hand may have replaced them meanwhile).
    r = _rollout(tmp_path, monkeypatch)
    fake = FakeSteps(fail={("drain", "n1")})
    assert _run(r, fake, monkeypatch) == 2
    assert r.nodes["n1"].state == "failed" and r.nodes["n1"].before == {}
    assert ("undrain", "n1") in fake.calls and ("unlock", "n1") in fake.calls



def test_a_rolled_back_node_is_read_again_when_resumed_and_rolled_back_to_what_ran_then(tmp_path, monkeypatch):
    # Between the rollback and --resume, a maintenance-window deploy replaced n1's replica (id "B").
    # The resumed attempt fails again: its rollback puts back "B", never the container of the first
    # attempt, which this attempt did not replace.
    r = _rollout(tmp_path, monkeypatch)
    fake = FakeSteps(fail={("validate", "n1")})
    assert _run(r, fake, monkeypatch) == 2
    assert r.nodes["n1"].state == "rolled-back" and r.nodes["n1"].before == {}
    assert fake.rolled_back_to["n1"] == {"vllm-n1-vllm-0": "old"}
    resumed = last_unfinished("inventory/lab.py")
    fake = FakeSteps(fail={("validate", "n1")})
    fake.container_ids = lambda rollout, name: {f"vllm-{name}-vllm-0": "B"}
    assert _run(resumed, fake, monkeypatch) == 2
    assert fake.rolled_back_to["n1"] == {"vllm-n1-vllm-0": "B"}
    assert resumed.nodes["n1"].state == "rolled-back"


def test_a_resumed_rolled_back_node_whose_drain_fails_is_put_back_not_left_drained(tmp_path, monkeypatch):
    # The rollback put the node back as it was: its first attempt's "updating" does not make the
    # second attempt's failed drain a half-updated node.
    r = _rollout(tmp_path, monkeypatch)
    assert _run(r, FakeSteps(fail={("validate", "n1")}), monkeypatch) == 2
    resumed = last_unfinished("inventory/lab.py")
    fake = FakeSteps(fail={("drain", "n1")})
    assert _run(resumed, fake, monkeypatch) == 2
    n1 = resumed.nodes["n1"]
    assert n1.state == "failed" and "stays drained" not in n1.error, n1.error
    assert ("undrain", "n1") in fake.calls and ("unlock", "n1") in fake.calls
    assert ("rollback", "n1") not in fake.calls


def test_a_rolled_back_node_whose_lock_fails_on_resume_gets_it_back_and_is_not_called_drained(tmp_path, monkeypatch):
    r = _rollout(tmp_path, monkeypatch)
    assert _run(r, FakeSteps(fail={("validate", "n1")}), monkeypatch) == 2
    resumed = last_unfinished("inventory/lab.py")
    fake = FakeSteps(fail={("lock", "n1")})
    assert _run(resumed, fake, monkeypatch) == 2
    assert "stays drained" not in resumed.nodes["n1"].error and ("unlock", "n1") in fake.calls


def _gpu_node_steps(monkeypatch, now: dict[str, str]):
    """rollout_steps with one GPU node (replicas vllm-0 and vllm-1) whose replica containers are
    ``now``; ``shell`` answers the id listing from it and records every other command."""
    from contextlib import contextmanager
    from types import SimpleNamespace

    from gpufleet import rollout_steps as steps
    from gpufleet.fleet_host import FleetHost
    from gpufleet.settings import HostSettings

    replicas = [{"name": "vllm-0", "gpus": [0], "port": 8000}, {"name": "vllm-1", "gpus": [1], "port": 8001}]
    node = FleetHost("n1", ["gpu_nodes"], HostSettings(private_address="10.0.0.6", vllm_replicas=replicas), {})
    fleet = SimpleNamespace(hosts={"n1": node})
    commands, ready_for = [], []

    @contextmanager
    def on_node(rollout, name):
        yield SimpleNamespace(name="n1", data={}), fleet

    def shell(host, command, timeout=300, **arguments):
        if command.startswith("for c in "):  # the ids of the named containers that exist
            asked = command.split("for c in ", 1)[1].split("; do", 1)[0].split()
            return True, "".join(f"{c} {now[c]}\n" for c in asked if c in now)
        commands.append(command)
        return True, ""

    monkeypatch.setattr(steps, "_fleet", lambda rollout: fleet)
    monkeypatch.setattr(steps, "_on_node", on_node)
    monkeypatch.setattr(steps, "shell", shell)
    monkeypatch.setattr(steps, "_ready_on", lambda host, n, only=None: (ready_for.append(only), (True, ""))[1])
    return steps, SimpleNamespace(id="r-test", inventory="inventory/lab.py", overrides={}), commands, ready_for


def test_a_rollback_removes_the_replica_the_update_added_and_puts_back_the_one_it_replaced(monkeypatch):
    # Before: only vllm-0 ("old"). The update recreated vllm-0 ("new") and added vllm-1.
    steps, rollout, commands, ready_for = _gpu_node_steps(
        monkeypatch, now={"vllm-n1-vllm-0": "new", "vllm-n1-vllm-1": "added"})
    steps.rollback(rollout, "n1", {"vllm-n1-vllm-0": "old"})
    assert len(commands) == 2
    assert "docker rename vllm-n1-vllm-0.gpufleet-previous vllm-n1-vllm-0" in commands[0]
    assert "docker rm -f vllm-n1-vllm-1" in commands[1] and "gpufleet-previous" not in commands[1]
    assert ready_for == [{"vllm-n1-vllm-0"}]  # the removed one is not waited for


def test_a_rollback_that_cannot_put_back_a_retired_replica_raises_after_trying_every_replica(monkeypatch):
    # The update retired n1-vllm-old (removed with its previous container) and added vllm-0 and vllm-1.
    steps, rollout, commands, ready_for = _gpu_node_steps(
        monkeypatch, now={"vllm-n1-vllm-0": "added", "vllm-n1-vllm-1": "added-too"})
    with pytest.raises(steps.StepError, match=r"vllm-n1-vllm-old retired by the update, cannot be put back"):
        steps.rollback(rollout, "n1", {}, retiring=["n1-vllm-old"])
    assert [c.split("docker rm -f ")[1].split()[0] for c in commands] == ["vllm-n1-vllm-0", "vllm-n1-vllm-1"]
    assert ready_for == []  # raised before waiting: the node stays drained for a person


@pytest.mark.parametrize("rows_kept, kind", [(True, ""), (False, ""), (False, REPLICAS)])
def test_a_milvus_change_is_backed_up_before_and_its_rows_checked_after(tmp_path, monkeypatch, rows_kept, kind):
    rollout = _rollout(tmp_path, monkeypatch, changes=("Milvus (standalone)", "vLLM replica x"), kind=kind)
    rollout.nodes = {"n1": rollout.nodes["n1"]}  # the vector_db node alone
    rollout.batches = [["n1"]]
    fake = FakeSteps(fail=() if rows_kept else [("milvus_rows_kept", "fleet")])
    fake.live = {"n1": ["n1-vllm-0"], "n9": ["n9-vllm-0"]}  # a node with nothing to change serves meanwhile
    code = _run(rollout, fake, monkeypatch)
    steps = [c[0] for c in fake.calls]
    assert steps.index("back_up_milvus") < steps.index("update") < steps.index("milvus_rows_kept")
    assert ("milvus_rows_kept", (("docs", 120),)) in fake.calls
    node = rollout.nodes["n1"]
    assert node.data_backup == "/backups/lab/20261205T000000Z" and node.data_rows == {"docs": 120}
    if rows_kept:
        assert code == 0 and node.state == "done"
    else:  # stopped, locked, and the way back named; replicas that validated are not rolled back
        assert code == 2 and node.state == "failed" and "/backups/lab/20261205T000000Z" in node.error
        assert ("unlock", "n1") not in fake.calls and ("rollback", "n1") not in fake.calls
        assert (("undrain", "n1") in fake.calls) == (kind == REPLICAS)  # back in rotation: it serves fine


def test_a_change_without_milvus_takes_no_backup(tmp_path, monkeypatch):
    rollout = _rollout(tmp_path, monkeypatch)
    fake = FakeSteps()
    assert _run(rollout, fake, monkeypatch) == 0
    assert not any(c[0] in ("back_up_milvus", "milvus_rows_kept") for c in fake.calls)


def test_prepare_runs_only_for_nodes_that_build_an_image_or_stage_weights(tmp_path, monkeypatch):
    r = _rollout(tmp_path, monkeypatch, changes=("vLLM replica gpu-node-1-vllm-0 (recreate)",))
    fake = FakeSteps()
    assert _run(r, fake, monkeypatch) == 0
    assert not [c for c in fake.calls if c[0] == "prepare"]  # a flag change: nothing to build first
    r = _rollout(tmp_path, monkeypatch)
    r.nodes["n2"].changes = ["vLLM image (NCCL pinned inside)", "vLLM replica n2-vllm-0"]
    fake = FakeSteps()
    assert _run(r, fake, monkeypatch) == 0
    assert [c for c in fake.calls if c[0] == "prepare"] == [("prepare", ("n2",))]


def test_the_prepared_operations_are_named_as_deploy_py_names_them():
    from gpufleet import PROJECT_ROOT
    from gpufleet.rollout_steps import PREPARED

    names = re.findall(r'name="([^"]+)"', (PROJECT_ROOT / "deploy.py").read_text())
    for prefix in PREPARED:
        assert [n for n in names if n.startswith(prefix)], f"deploy.py has no operation named {prefix}..."


def test_a_gpu_stack_node_is_prepared_although_its_plan_stops_at_the_serving_gate(tmp_path, monkeypatch):
    # The gate refuses the driver before deploy.py reaches the image and the weights: the plan
    # cannot say whether they change, so the node is prepared before anything is drained.
    r = _rollout(tmp_path, monkeypatch, changes=("NVIDIA driver 580.105.08",), kind=GPU_STACK)
    fake = FakeSteps()
    assert _run(r, fake, monkeypatch) == 0
    assert [c for c in fake.calls if c[0] == "prepare"] == [("prepare", ("n1", "n2"))]
    assert fake.calls.index(("prepare", ("n1", "n2"))) < fake.calls.index(("drain", "n1"))


def test_validation_names_a_read_that_gave_up_instead_of_raising(monkeypatch):
    from contextlib import contextmanager
    from types import SimpleNamespace

    from pyinfra.api.exceptions import PyinfraError

    from gpufleet import rollout_steps as steps
    from gpufleet.settings import HostSettings

    node = SimpleNamespace(settings=HostSettings(), is_gpu_node=True)
    fleet = SimpleNamespace(hosts={"n1": node})

    class Host:
        def get_fact(self, fact, **kwargs):
            raise PyinfraError("No hosts remaining!")  # what pyinfra raises when the only host's read fails

    @contextmanager
    def on_node(rollout, name):
        yield Host(), fleet

    monkeypatch.setattr(steps, "_fleet", lambda rollout: fleet)
    monkeypatch.setattr(steps, "_on_node", on_node)
    monkeypatch.setattr(steps, "_ready_on", lambda host, n: (True, ""))
    ok, why = steps.validate(SimpleNamespace(id="r-test", inventory="inventory/lab.py", overrides={}), "n1")
    assert not ok and why.startswith("validation could not read the node: ") and "No hosts remaining" in why


# ------------------------------------------------------------------ the Milvus host of its own ----

def _rollout_with_milvus_host(tmp_path, monkeypatch, changes=("Milvus (standalone)", "Base packages")):
    """n1 and n2 (replica changes, canary 1) and the Milvus host of its own, batched as a new rollout is."""
    r = _rollout(tmp_path, monkeypatch)
    r.nodes = {MILVUS_HOST: NodeRollout(MILVUS_HOST, changes=list(changes)), **r.nodes}
    r.batches = make_batches(["n1", "n2"], canary=1, max_unavailable=1, data=[MILVUS_HOST])
    return r


def _calls_on(fake, name):
    return [c for c in fake.calls if c[1] in (name, (name,))]


def _gpu_nodes_touched(fake):
    return [c for c in fake.calls if c[0] != "prepare" and c[1] in ("n1", "n2", ("n1",), ("n2",))]


def test_the_milvus_host_of_its_own_goes_first_in_its_own_batch_and_the_canary_stays_the_first_gpu_node():
    assert make_batches(["n1", "n2", "n3"], canary=1, max_unavailable=2, data=[MILVUS_HOST]) == [
        [MILVUS_HOST], ["n1"], ["n2", "n3"]]
    assert make_batches(["n1", "n2"], canary=0, max_unavailable=2, data=[MILVUS_HOST]) == [[MILVUS_HOST], ["n1", "n2"]]
    assert make_batches([], canary=1, max_unavailable=1, data=[MILVUS_HOST]) == [[MILVUS_HOST]]  # --limit db-1
    assert make_batches(["n1", "n2"], canary=1, max_unavailable=1) == [["n1"], ["n2"]]


def test_the_milvus_host_is_locked_backed_up_updated_validated_checked_and_never_drained(tmp_path, monkeypatch):
    r = _rollout_with_milvus_host(tmp_path, monkeypatch)
    fake = FakeSteps()
    assert _run(r, fake, monkeypatch) == 0
    db = [c for c in fake.calls if c[1] in (MILVUS_HOST, (MILVUS_HOST,), "fleet") or c[0] == "milvus_rows_kept"]
    assert db == [("lock", MILVUS_HOST), ("back_up_milvus", "fleet"), ("update", (MILVUS_HOST,)),
                  ("validate", MILVUS_HOST), ("milvus_rows_kept", (("docs", 120),)),
                  ("forget_previous", MILVUS_HOST), ("unlock", MILVUS_HOST)]
    assert [s for s, _ in r.nodes[MILVUS_HOST].history] == ["updating", "validating", "done"]
    # Done before the canary is locked; the GPU nodes roll one at a time after it, as ever.
    assert fake.calls.index(("unlock", MILVUS_HOST)) < fake.calls.index(("lock", "n1"))
    assert ("update", ("n1",)) in fake.calls and ("update", ("n2",)) in fake.calls
    assert [c[0] for c in _calls_on(fake, "n1")] == ["lock", "drain", "update", "validate", "undrain",
                                                      "forget_previous", "unlock"]


def test_a_milvus_host_change_without_milvus_is_converged_without_a_backup(tmp_path, monkeypatch):
    r = _rollout_with_milvus_host(tmp_path, monkeypatch, changes=("Base packages",))
    fake = FakeSteps()
    assert _run(r, fake, monkeypatch) == 0
    assert [c[0] for c in _calls_on(fake, MILVUS_HOST)] == ["lock", "update", "validate", "forget_previous", "unlock"]
    assert not any(c[0] in ("back_up_milvus", "milvus_rows_kept") for c in fake.calls)


def test_a_milvus_host_that_lost_rows_stops_the_rollout_locked_before_any_gpu_node(tmp_path, monkeypatch):
    r = _rollout_with_milvus_host(tmp_path, monkeypatch)
    fake = FakeSteps(fail={("milvus_rows_kept", "fleet")})
    assert _run(r, fake, monkeypatch) == 2
    node = r.nodes[MILVUS_HOST]
    assert node.state == "failed" and "/backups/lab/20261205T000000Z" in node.error and "stays locked" in node.error
    assert ("unlock", MILVUS_HOST) not in fake.calls
    assert not any(c[0] in ("drain", "undrain", "rollback") for c in _calls_on(fake, MILVUS_HOST))
    assert _gpu_nodes_touched(fake) == [] and r.nodes["n1"].state == "pending"


@pytest.mark.parametrize("step", ["update", "validate"])
def test_a_milvus_host_that_fails_its_update_stays_locked_and_names_its_backup(tmp_path, monkeypatch, step):
    r = _rollout_with_milvus_host(tmp_path, monkeypatch)
    fake = FakeSteps(fail={(step, MILVUS_HOST)})
    assert _run(r, fake, monkeypatch) == 2
    node = r.nodes[MILVUS_HOST]
    assert node.state == "failed" and "stays locked" in node.error
    restore = "gpufleet restore inventory/lab.py --from /backups/lab/20261205T000000Z --replace"
    assert restore in node.error
    # Milvus is never rolled back (there is no previous container of it), nothing was drained.
    assert [c[0] for c in _calls_on(fake, MILVUS_HOST) if c[0] in ("unlock", "rollback", "drain", "undrain")] == []
    assert _gpu_nodes_touched(fake) == []


def test_a_failed_milvus_backup_puts_the_host_back_unchanged_and_resume_rolls_it_again(tmp_path, monkeypatch):
    r = _rollout_with_milvus_host(tmp_path, monkeypatch)
    fake = FakeSteps(fail={("back_up_milvus", "fleet")})
    assert _run(r, fake, monkeypatch) == 2
    node = r.nodes[MILVUS_HOST]
    assert node.state == "failed" and node.data_backup is None and "back_up_milvus failed" in node.error
    assert [c[0] for c in _calls_on(fake, MILVUS_HOST)] == ["lock", "unlock"]  # unlocked, never updated
    assert _gpu_nodes_touched(fake) == []
    # --resume reads the state file back; a backup that fails again still leaves the host unlocked.
    resumed = last_unfinished("inventory/lab.py")
    assert resumed.batches[0] == [MILVUS_HOST] and resumed.nodes[MILVUS_HOST].kind == ""
    fake = FakeSteps(fail={("back_up_milvus", "fleet")})
    assert _run(resumed, fake, monkeypatch) == 2
    assert [c[0] for c in _calls_on(fake, MILVUS_HOST)] == ["lock", "unlock"] and _gpu_nodes_touched(fake) == []
    resumed = last_unfinished("inventory/lab.py")
    fake = FakeSteps()
    assert _run(resumed, fake, monkeypatch) == 0
    assert {n: v.state for n, v in resumed.nodes.items()} == {MILVUS_HOST: "done", "n1": "done", "n2": "done"}
    assert resumed.nodes[MILVUS_HOST].data_backup == "/backups/lab/20261205T000000Z"


def test_the_plan_makes_the_milvus_host_an_in_place_node_before_the_canary():
    from types import SimpleNamespace

    from gpufleet.rollout_plan import describe, rollout_nodes

    def planned(nodes, data, live):
        fleet = SimpleNamespace(nodes=[SimpleNamespace(name=n) for n in ("n1", "n2", "n3")])
        return {"fleet": fleet, "nodes": nodes, "data": data, "live": live}

    live = {"n1": ["n1-vllm-0"], "n2": ["n2-vllm-0"], "n3": ["n3-vllm-0"]}
    gpu = {"n2": (["vLLM replica n2-vllm-0 (recreate)"], REPLICAS), "n1": (["NVIDIA driver 580"], GPU_STACK)}
    milvus = {MILVUS_HOST: ["Milvus (standalone)", "Base packages"]}
    nodes, batches = rollout_nodes(planned(gpu, milvus, live), canary=1, max_unavailable=2)
    assert batches == [[MILVUS_HOST], ["n1"], ["n2"]] and list(nodes) == [MILVUS_HOST, "n1", "n2"]
    db = nodes[MILVUS_HOST]
    assert (db.kind, db.disruptive, db.changes) == ("", False, ["Milvus (standalone)", "Base packages"])
    assert (nodes["n1"].kind, nodes["n2"].kind) == (GPU_STACK, REPLICAS)
    assert describe(db, milvus_host=True).startswith(
        f"Milvus host {MILVUS_HOST}: backed up, updated in place, row counts checked, before the GPU nodes")
    assert "Milvus answers checked" in describe(NodeRollout(MILVUS_HOST, changes=["Base packages"]), milvus_host=True)
    assert describe(nodes["n2"]).startswith("n2: drain, update, validate, undrain")
    # --limit db-1: only it; one live replica left is no reason to refuse (it drains nothing).
    nodes, batches = rollout_nodes(planned({}, milvus, {"n1": ["n1-vllm-0"]}), canary=1, max_unavailable=1)
    assert (list(nodes), batches) == ([MILVUS_HOST], [[MILVUS_HOST]])
    # --limit gpu_nodes: the Milvus host was not planned, so it is not rolled.
    nodes, batches = rollout_nodes(planned(gpu, {}, live), canary=1, max_unavailable=2)
    assert batches == [["n1"], ["n2"]] and MILVUS_HOST not in nodes
    # Capacity is judged on the GPU batches as before: draining every live replica is refused.
    with pytest.raises(RolloutError, match="no live replica"):
        rollout_nodes(planned(gpu, milvus, {"n1": ["n1-vllm-0"], "n2": ["n2-vllm-0"]}), canary=0, max_unavailable=2)
    assert rollout_nodes(planned({}, {}, live), canary=1, max_unavailable=1) == ({}, [])


def _milvus_host_steps(monkeypatch, shell_answer=(True, "")):
    """rollout_steps with the Milvus host of its own as its fleet, a host that answers no read, and
    ``shell`` recorded: what validating or locking that host asks it."""
    from contextlib import contextmanager
    from types import SimpleNamespace

    from gpufleet import rollout_steps as steps
    from gpufleet.fleet_host import FleetHost
    from gpufleet.settings import HostSettings

    db = FleetHost(MILVUS_HOST, ["vector_db"], HostSettings(private_address="10.0.0.5"), {})
    fleet = SimpleNamespace(hosts={MILVUS_HOST: db})
    commands = []

    class Host:
        name, data = MILVUS_HOST, {}

        def get_fact(self, fact, **kwargs):
            raise AssertionError(f"read {fact.__name__} on a host without GPUs or replicas")

        def run_shell_command(self, command, **kwargs):
            raise AssertionError(f"ran {command} on a host without replicas")

    @contextmanager
    def on_node(rollout, name):
        yield Host(), fleet

    def shell(host, command, timeout=300, **arguments):
        commands.append(command)
        return shell_answer

    monkeypatch.setattr(steps, "_fleet", lambda rollout: fleet)
    monkeypatch.setattr(steps, "_on_node", on_node)
    monkeypatch.setattr(steps, "shell", shell)
    monkeypatch.setattr(steps, "_ready_on", lambda host, n: pytest.fail("validated vLLM replicas on the Milvus host"))
    rollout = SimpleNamespace(id="r-test", inventory="inventory/lab.py", overrides={}, holder="me@ctl", since="t0")
    return steps, rollout, db, Host(), commands


def test_the_milvus_host_is_validated_by_milvus_answering_not_by_gpu_checks(monkeypatch):
    steps, rollout, _, _, commands = _milvus_host_steps(monkeypatch)
    assert steps.validate(rollout, MILVUS_HOST) == (True, "")
    assert len(commands) == 1 and "http://10.0.0.5:9091/healthz" in commands[0] and "milvus-standalone" in commands[0]
    down = "milvus not healthy at http://10.0.0.5:9091/healthz after 180s; last log lines of x:\nlog 1\nlog 2"
    steps, rollout, _, _, _ = _milvus_host_steps(monkeypatch, shell_answer=(False, down))
    ok, why = steps.validate(rollout, MILVUS_HOST)
    assert not ok and why.startswith("milvus not healthy at http://10.0.0.5:9091/healthz") and why.endswith("log 2")


def test_locking_and_unlocking_the_milvus_host_asks_nothing_about_replicas(monkeypatch):
    from gpufleet import node_lock

    steps, rollout, db, host, commands = _milvus_host_steps(monkeypatch)
    assert steps._retiring_on(host, db) == [] and steps._container_ids_on(host, db) == {}
    taken = []
    monkeypatch.setattr(node_lock, "acquire", lambda host, *args: taken.append(args))
    monkeypatch.setattr(node_lock, "release", lambda host, rollout_id: taken.append(("release", rollout_id)))
    assert steps.lock(rollout, MILVUS_HOST, "updating") == {"retiring": [], "before": {}}
    steps.unlock(rollout, MILVUS_HOST, forget_previous=True)
    assert taken == [("r-test", "me@ctl", "t0", "updating"), ("release", "r-test")]
    assert commands == []  # no `docker rm -f` of previous replicas there are none of


def test_the_milvus_host_of_its_own_is_refused_to_all_but_the_rollout_that_holds_it(monkeypatch):
    import ast

    from gpufleet import PROJECT_ROOT

    lock = {"id": "r-1", "holder": "sre@ctl", "since": "t0", "state": "updating"}
    monkeypatch.setattr(gate_module, "host", FakeHost(lock, []))
    assert gate_module.refuse_other_rollouts("r-1") == lock
    with pytest.raises(gate_module.RolloutLockHeld, match=r"held by rollout r-1 \(sre@ctl"):
        gate_module.refuse_other_rollouts(None)  # a plain deploy
    monkeypatch.setattr(gate_module, "host", FakeHost(None, []))
    assert gate_module.refuse_other_rollouts(None) is None
    # deploy.py asks it first thing for a Milvus host outside gpu_nodes (which has no ServingGate).
    tree = ast.parse((PROJECT_ROOT / "deploy.py").read_text())
    block = next(b for b in tree.body if isinstance(b, ast.If) and "'vector_db' in host.groups" in ast.unparse(b.test))
    own = next(b for b in block.body if isinstance(b, ast.If) and "'gpu_nodes' not in host.groups" in ast.unparse(b.test))
    assert ast.unparse(own.body[0]) == "refuse_other_rollouts(settings.rollout_id)"


def test_the_node_lock_runs_with_the_hosts_sudo_and_a_lock_that_cannot_be_released_is_an_error():
    # pyinfra applies a host's `_sudo` to operations, not to a raw command: the lock, in root's
    # /var/lib/gpufleet, must pass it, or a rollout on a `_sudo = True` fleet locks nothing.
    from types import SimpleNamespace

    from gpufleet import node_lock

    class Host:
        name, data = "n1", {"_sudo": True}

        def __init__(self, answers):
            self.answers, self.calls = list(answers), []

        def run_shell_command(self, command, **arguments):
            self.calls.append(arguments)
            ok, text = self.answers.pop(0)
            return ok, SimpleNamespace(combined_lines=[SimpleNamespace(line=text)])

    host = Host([(True, "ACQUIRED"), (True, "")])
    node_lock.acquire(host, "r-1", "sre@ctl", "t0", "draining")
    node_lock.release(host, "r-1")
    assert [call.get("_sudo") for call in host.calls] == [True, True]
    refused = Host([(False, "rm: cannot remove '/var/lib/gpufleet/rollout.lock': Permission denied")])
    with pytest.raises(node_lock.LockHeld, match=r"n1: could not release the rollout lock .*Permission denied"):
        node_lock.release(refused, "r-1")


def test_a_damaged_state_file_is_skipped_with_a_warning_and_resume_finds_the_rollout(tmp_path, monkeypatch, capsys):
    r = _rollout(tmp_path, monkeypatch)
    assert _run(r, FakeSteps(fail={("validate", "n1")}), monkeypatch) == 2
    (tmp_path / "rollouts" / "r-20200101-000000-dead.json").write_text("")  # a write cut short
    (tmp_path / "rollouts" / "r-20200101-000000-beef.json").write_text('{"inventory": "inventory/lab.py"}')
    assert last_unfinished("inventory/lab.py").id == "r-test"
    warned = capsys.readouterr().err
    assert "r-20200101-000000-dead.json" in warned and "r-20200101-000000-beef.json" in warned


def test_an_in_place_node_refused_at_its_turn_is_given_back_untouched_and_says_what_to_do(tmp_path, monkeypatch):
    # n1 served nothing when the rollout was planned (kind ""); by its turn its replica serves
    # again, and the gate refuses the recreate under the in-place lock: nothing ran there.
    r = _rollout(tmp_path, monkeypatch, kind="")
    fake = FakeSteps()
    fake.update = lambda rollout, names: {n: (False, f"{REAL_REFUSED}vLLM replica x would interrupt serving on {n}")
                                          for n in names}
    assert _run(r, fake, monkeypatch) == 2
    n1 = r.nodes["n1"]
    assert n1.state == "failed" and "start a new rollout" in n1.error and "stays" not in n1.error, n1.error
    assert ("unlock", "n1") in fake.calls and ("drain", "n1") not in fake.calls and n1.before == {}
    # The same refusal of a drained node is not this case: it stays drained and locked for a person.
    r = _rollout(tmp_path, monkeypatch)
    fake = FakeSteps()
    fake.update = lambda rollout, names: {n: (False, f"{REAL_REFUSED}held by rollout r-other") for n in names}
    assert _run(r, fake, monkeypatch) == 2
    assert "start a new rollout" not in r.nodes["n1"].error


def test_validation_does_not_pass_the_nccl_pin_when_docker_did_not_answer():
    # A failed read lists no containers: "no container loads another NCCL" must not follow from it.
    from types import SimpleNamespace

    from gpufleet import rollout_steps as steps
    from gpufleet.settings import HostSettings

    s = HostSettings()
    answers = {"NvidiaDriver": {"version": s.nvidia_driver_version},
               "VllmNcclVersions": {"status": "failed", "error": "Cannot connect to the Docker daemon", "containers": {}}}
    host = SimpleNamespace(get_fact=lambda fact, **kwargs: answers[fact.__name__])
    pinned, why = steps._loaded_pins_on(host, s)
    assert not pinned and "Cannot connect to the Docker daemon" in why
    answers["VllmNcclVersions"] = {"status": "ok", "containers": {"vllm-n1-vllm-0": s.nccl_version}}
    assert steps._loaded_pins_on(host, s) == (True, "")


def test_a_batch_is_not_drained_when_the_replicas_left_running_now_would_be_none(tmp_path, monkeypatch):
    # Planned with both replicas live; by n2's turn n1's replica has died: draining n2 would leave
    # nothing behind the load balancers. The rollout stops before n2 is locked or drained.
    r = _rollout(tmp_path, monkeypatch)
    fake = FakeSteps()
    reads = iter([{"n1": ["n1-vllm-0"], "n2": ["n2-vllm-0"]}, {"n1": [], "n2": ["n2-vllm-0"]}])
    fake.fleet_live_replicas = lambda rollout: next(reads)
    assert _run(r, fake, monkeypatch) == 2
    assert r.nodes["n1"].state == "done"
    n2 = r.nodes["n2"]
    assert n2.state == "failed" and n2.error.startswith("not drained: draining n2 would leave no live replica"), n2.error
    assert not any(c[1] == "n2" for c in fake.calls if c[0] != "prepare")
    # --resume checks again, and rolls n2 once n1 serves.
    resumed = last_unfinished("inventory/lab.py")
    fake = FakeSteps()
    assert _run(resumed, fake, monkeypatch) == 0 and resumed.nodes["n2"].state == "done"
    # A batch changed in place drains nothing: nothing to read.
    in_place = _rollout(tmp_path, monkeypatch, kind="")
    fake = FakeSteps()
    assert _run(in_place, fake, monkeypatch) == 0 and ("fleet_live_replicas", "*") not in fake.calls


def test_one_process_at_a_time_runs_a_rollout(tmp_path, monkeypatch):
    # A second --resume of the same rollout while the first runs: refused before it writes anything.
    from gpufleet.rollout import RunLock

    r = _rollout(tmp_path, monkeypatch)
    with RunLock(r):
        with pytest.raises(RolloutError, match=r"rollout r-test is being run by another gpufleet process"):
            RunLock(r)
    RunLock(r).release()  # released with the first: the next run takes it
    other = _rollout(tmp_path, monkeypatch)
    other.id = "r-other"
    with RunLock(r), RunLock(other):  # another rollout's file is another lock
        pass


@pytest.mark.parametrize("read, stops", [
    ({"status": "ok", "exit_code": 0, "error": None, "containers": ["vllm-n1-vllm-0", "jupyter"]},
     "docker stop -t 45 vllm-n1-vllm-0 jupyter"),
    ({"status": "missing", "exit_code": None, "error": "docker not installed", "containers": []}, None),
    ({"status": "failed", "exit_code": 7, "error": "curl: (7) Failed to connect to docker port 80", "containers": []},
     "could not ask Docker which containers hold GPUs: curl: (7) Failed to connect"),
])
def test_stopping_the_gpu_containers_never_reads_a_docker_that_did_not_answer_as_none(monkeypatch, read, stops):
    """A drained node's GPU containers are stopped before a GPU-stack change; a failed read is a
    failed step (the change would take the GPUs of whatever still runs), never "nothing to stop"."""
    from contextlib import contextmanager
    from types import SimpleNamespace

    from gpufleet import rollout_steps

    host, sent = SimpleNamespace(get_fact=lambda fact: read, data={}), []
    settings = SimpleNamespace(vllm_stop_timeout_effective=lambda: 45)
    monkeypatch.setattr(rollout_steps, "_fleet", lambda rollout: SimpleNamespace(hosts={"n1": SimpleNamespace(settings=settings)}))
    monkeypatch.setattr(rollout_steps, "_on_node", contextmanager(lambda rollout, name: (yield host, None)))
    monkeypatch.setattr(rollout_steps, "shell", lambda h, command, **kw: (sent.append(command), (True, ""))[1])
    monkeypatch.setattr(rollout_steps, "sudo_arguments", lambda h: {})
    if read["status"] == "failed":
        with pytest.raises(rollout_steps.StepError, match=re.escape(stops)):
            rollout_steps.stop_gpu_containers(None, "n1")
        assert sent == []
    else:
        rollout_steps.stop_gpu_containers(None, "n1")
        assert sent == ([stops] if stops else [])
