"""Model weights staged before serving, in the lab (issue 11): the lab's nodes stage its model from
the lab repository as production nodes stage an archive from an internal mirror
(group_data/lab.py: ``vllm_model_source = "url"``; operations/weights.py)."""

from __future__ import annotations

import hashlib
import json
import runpy

import pytest

from gpufleet import PROJECT_ROOT
from tests.lab.conftest import causes, deploy, drift

pytestmark = pytest.mark.lab

LAB = runpy.run_path(str(PROJECT_ROOT / "group_data" / "lab.py"))
SHA = LAB["vllm_model_sha256"]
STAGED = f"/var/lib/gpufleet/models/{SHA}"
CONTAINER = "vllm-gpu-node-2-vllm-0"


def _inspect(node, container: str) -> dict:
    return json.loads(node.check_output(f"docker inspect {container}"))[0]


def test_each_node_serves_the_staged_archive_offline(converged):
    for name in ("gpu-node-1", "gpu-node-2"):
        node = converged[name]
        marker = json.loads(node.file(f"{STAGED}/.gpufleet-staged.json").content_string)
        assert marker["source"] == "url" and marker["sha256"] == SHA and marker["files"] >= 3
        # Every staged file still hashes to the manifest the staging wrote.
        assert node.run(f"cd {STAGED} && sha256sum -c --quiet .gpufleet-manifest.sha256").rc == 0
        c = _inspect(node, f"vllm-{name}-vllm-0")
        assert c["Config"]["Cmd"][0] == "/gpufleet/model"
        assert "HF_HUB_OFFLINE=1" in c["Config"]["Env"]
        mount = next(m for m in c["Mounts"] if m["Destination"] == "/gpufleet/model")
        assert mount["Source"] == STAGED and mount["RW"] is False
    # What the nodes staged is what the lab repository serves (on the lab network), byte for byte.
    served = converged["gpu-node-1"].check_output("curl -fsS http://lab-repo/models/qwen3-tiny.tar | sha256sum")
    assert served.split()[0] == SHA == hashlib.sha256((PROJECT_ROOT / "lab/.state/repo/models/qwen3-tiny.tar")
                                                       .read_bytes()).hexdigest()


def test_a_checksum_that_is_not_the_pin_is_refused_and_the_replica_keeps_serving(converged):
    node = converged["gpu-node-2"]
    before = _inspect(node, CONTAINER)["Id"]
    wrong = hashlib.sha256(b"not the lab model").hexdigest()
    result = deploy("--limit", "gpu-node-2", "--data", f"vllm_model_sha256={wrong}",
                    "--data", "allow_serving_disruption=true")
    # Its only host failed: pyinfra stops ("No hosts remaining!") and prints no JSON result.
    assert result["rc"] != 0 and "No hosts remaining" in result["stderr"]
    assert f"[gpu-node-2] gpufleet: http://lab-repo/models/qwen3-tiny.tar has sha256 {SHA}, not the pinned {wrong}" \
        in result["stderr"], result["stderr"][-2000:]
    assert not node.file(f"/var/lib/gpufleet/models/{wrong}").exists
    after = _inspect(node, CONTAINER)
    assert after["Id"] == before and after["State"]["Running"]  # the failed staging stopped the node's deploy


def test_drift_sees_staged_weights_changed_on_the_node_and_a_deploy_restages_them(converged):
    node = converged["gpu-node-1"]
    before = _inspect(node, "vllm-gpu-node-1-vllm-0")["Id"]
    node.run_expect([0], f"truncate -s 100 {STAGED}/model.safetensors")
    code, report = drift("--limit", "gpu-node-1")  # one host: the check below is about this one
    assert code == 2 and any("Model weights staged" in c for c in causes(report, "gpu-node-1")), report
    result = deploy("--limit", "gpu-node-1")
    assert result["rc"] == 0, result["stderr"][-3000:]
    assert list(result["changed"]) == ["Model weights staged"], result["changed"]
    assert node.run(f"cd {STAGED} && sha256sum -c --quiet .gpufleet-manifest.sha256").rc == 0
    # Restaged beside the running replica: its mount path and spec are the same, so it was not recreated.
    assert _inspect(node, "vllm-gpu-node-1-vllm-0")["Id"] == before
    code, report = drift("--limit", "gpu-node-1")
    assert code == 0, report
