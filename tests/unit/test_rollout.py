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
