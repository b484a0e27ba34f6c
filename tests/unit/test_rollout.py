"""The rollout's policy and state file, and the serving gate, without a lab."""

import json

import pytest
from pyinfra.api import OperationError

import operations.serving_gate as gate_module
from gpufleet.rollout import (DONE, FAILED, PENDING, NodeRollout, Rollout, RolloutError, check_capacity,
                              last_unfinished, make_batches)


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


def test_driver_changes_are_never_rolled_back_automatically():
    assert NodeRollout("n1", changes=["vLLM replica n1-vllm-0"]).rollback_allowed
    assert not NodeRollout("n1", changes=["NVIDIA driver (open modules)", "vLLM replica x"]).rollback_allowed


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
    lock = {"id": "r-20261204-1", "holder": "sre@ctl", "since": "2026-12-04T18:00:00Z", "state": "updating"}
    monkeypatch.setattr(gate_module, "host", FakeHost(lock, ["vllm-gpu-node-1-vllm-0"]))
    gate_module.ServingGate(rollout_id="r-20261204-1").check(Meta(True), "the rollout's own update")
    with pytest.raises(OperationError, match=r"held by rollout r-20261204-1 \(sre@ctl, since 2026-12-04T18:00:00Z"):
        gate_module.ServingGate()
    with pytest.raises(OperationError, match="held by rollout"):
        gate_module.ServingGate(rollout_id="r-other")


class FakeSteps:
    """The rollout's steps, recorded; ``fail`` names a step and a node that fail."""

    class StepError(Exception):
        pass

    def __init__(self, fail=()):
        self.fail = set(fail)
        self.calls = []

    def _do(self, step, name):
        self.calls.append((step, name))
        if (step, name) in self.fail:
            raise self.StepError(f"{step} failed on {name}")

    def prepare(self, rollout, nodes):
        self.calls.append(("prepare", tuple(nodes)))
        return {n: None for n in nodes}

    def lock(self, rollout, name, state):
        self._do("lock", name)

    def unlock(self, rollout, name):
        self._do("unlock", name)

    def drain(self, rollout, name):
        self._do("drain", name)

    def undrain(self, rollout, name):
        self._do("undrain", name)

    def container_ids(self, rollout, name):
        return {f"vllm-{name}-vllm-0": "old"}

    def update(self, rollout, name):
        self.calls.append(("update", name))
        return ("update", name) not in self.fail, "the deploy failed"

    def validate(self, rollout, name):
        self.calls.append(("validate", name))
        return ("validate", name) not in self.fail, "not ready"

    def rollback(self, rollout, name, before):
        self._do("rollback", name)
        assert before == {f"vllm-{name}-vllm-0": "old"}

    def forget_previous(self, rollout, name):
        self.calls.append(("forget_previous", name))


def _rollout(tmp_path, monkeypatch, changes=("vLLM replica x",)):
    monkeypatch.setenv("GPUFLEET_STATE_DIR", str(tmp_path))
    nodes = {n: NodeRollout(n, changes=list(changes), disruptive=True) for n in ("n1", "n2")}
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
    n1 = [c for c in fake.calls if c[1] == "n1"]
    assert n1 == [("lock", "n1"), ("drain", "n1"), ("update", "n1"), ("validate", "n1"),
                  ("forget_previous", "n1"), ("undrain", "n1"), ("unlock", "n1")]
    assert fake.calls.index(("unlock", "n1")) < fake.calls.index(("lock", "n2"))  # one node at a time


def test_a_failed_canary_is_rolled_back_undrained_and_stops_the_rollout(tmp_path, monkeypatch):
    r = _rollout(tmp_path, monkeypatch)
    fake = FakeSteps(fail={("validate", "n1")})
    assert _run(r, fake, monkeypatch) == 2
    assert r.nodes["n1"].state == "rolled-back" and r.nodes["n2"].state == "pending"
    assert ("rollback", "n1") in fake.calls and ("undrain", "n1") in fake.calls
    assert not any(c[1] == "n2" for c in fake.calls)
    assert last_unfinished("inventory/lab.py").id == "r-test"  # --resume finds it


def test_a_driver_change_that_fails_stays_drained_and_is_never_rolled_back(tmp_path, monkeypatch):
    r = _rollout(tmp_path, monkeypatch, changes=("NVIDIA driver (open modules)",))
    fake = FakeSteps(fail={("update", "n1")})
    assert _run(r, fake, monkeypatch) == 2
    assert r.nodes["n1"].state == "failed" and "stays drained and locked" in r.nodes["n1"].error
    assert ("rollback", "n1") not in fake.calls and ("undrain", "n1") not in fake.calls


def test_a_drain_that_times_out_puts_the_node_back_unchanged(tmp_path, monkeypatch):
    r = _rollout(tmp_path, monkeypatch)
    fake = FakeSteps(fail={("drain", "n1")})
    assert _run(r, fake, monkeypatch) == 2
    assert r.nodes["n1"].state == "failed"
    assert ("update", "n1") not in fake.calls and ("undrain", "n1") in fake.calls


def test_resume_skips_done_nodes(tmp_path, monkeypatch):
    r = _rollout(tmp_path, monkeypatch)
    r.nodes["n1"].state = "done"
    fake = FakeSteps()
    assert _run(r, fake, monkeypatch) == 0
    assert not any(c[1] == "n1" for c in fake.calls if c[0] != "prepare")
