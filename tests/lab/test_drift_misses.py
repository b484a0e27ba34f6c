"""Nightly drift on the lab, what it used to miss: containers changed in place, a container holding
GPUs that gpufleet does not run, a vLLM image never checked or built on a re-pushed upstream tag;
an unreadable kernel log and a hung nvidia-smi leave the host "not checked" (exit 1), named, and
the run ends instead of hanging. Each case puts the host back and ends with a clean drift."""

from __future__ import annotations

import time

import pytest

from tests.lab.conftest import NODE, assert_only_drifted, deploy, drift

BASE = "lab-registry:5000/gpufleet-lab/vllm-cpu:0.32.0"  # group_data/lab.py vllm_image
REPLICA_IMAGE = "$(docker ps --filter label=io.gpufleet.role=vllm --format '{{.Image}}' | head -n 1)"



# (id, inject on NODE, expected text in one of its causes, repair: a command, or None for a deploy of NODE)
CATALOG = [
    ("restart-policy-updated", "docker update --restart no milvus-standalone",
     "container milvus-standalone: restart policy no, the spec says unless-stopped (changed in place)",
     "docker update --restart unless-stopped milvus-standalone"),
    # Joined to one more network (disconnecting the lab's bridge would drop its published ports).
    ("network-connected", "docker network create gpufleet-test-net >/dev/null && "
                          "docker network connect gpufleet-test-net milvus-standalone",
     "container milvus-standalone: connected to network gpufleet-test-net, which the spec does not name",
     "docker network disconnect gpufleet-test-net milvus-standalone && docker network rm gpufleet-test-net"),
    ("unmanaged-gpu-container", f"docker run -d --name gpu-squatter --gpus all --entrypoint sleep {REPLICA_IMAGE} 3600",
     "container gpu-squatter: holds GPUs (--gpus all) but is not one gpufleet runs", "docker rm -f gpu-squatter"),
    ("vllm-image-never-checked", "rm -f /var/lib/gpufleet/images/checked/*.json",
     "was built but never passed its NCCL/architecture check", None),
    ("upstream-tag-re-pushed",  # another image under the upstream tag on the node, as a `docker pull` of a re-push
     f"docker tag {BASE} gpufleet-test/base-original:1 && "
     f"docker tag \"$(docker inspect --format '{{{{.Config.Image}}}}' milvus-standalone)\" {BASE}",
     f"upstream tag {BASE} is now",
     f"docker tag gpufleet-test/base-original:1 {BASE} && docker rmi gpufleet-test/base-original:1"),
]


@pytest.mark.parametrize(("inject", "expected", "repair"), [c[1:] for c in CATALOG], ids=[c[0] for c in CATALOG])
def test_a_miss_is_found_on_the_right_host_with_its_cause(converged, inject, expected, repair):
    target = converged[NODE]
    injected = target.run(inject)
    assert injected.rc == 0, injected.stderr
    try:
        assert_only_drifted(NODE, expected)
    finally:
        if repair:
            assert target.run(repair).rc == 0
        else:
            fixed = deploy("--limit", NODE)
            assert fixed["rc"] == 0, fixed["stderr"][-2000:]
    code, report = drift()
    assert code == 0, report


def shadow(target, tool: str, script: str) -> None:
    """Put a stand-in in front of /usr/bin/<tool> on the lab host (undone by :func:`unshadow`)."""
    assert target.run(f"mv /usr/bin/{tool} /usr/bin/{tool}.gpufleet-test && printf '#!/bin/sh\\n{script}\\n' "
                      f"> /usr/bin/{tool} && chmod 755 /usr/bin/{tool}").rc == 0


def unshadow(target, *tools: str) -> None:
    for tool in tools:
        assert target.run(f"mv /usr/bin/{tool}.gpufleet-test /usr/bin/{tool}").rc == 0


def test_an_unreadable_kernel_log_is_not_checked_not_zero(converged):
    target = converged[NODE]
    # What an unprivileged reader gets on Debian 12 (kernel.dmesg_restrict=1, no journal access).
    shadow(target, "dmesg", "echo \"dmesg: read kernel buffer failed: Operation not permitted\" >&2; exit 1")
    shadow(target, "journalctl", "echo \"No journal files were found.\"; echo \"-- No entries --\"")
    try:
        code, report = drift()
        entry = next(h for h in report["hosts"] if h["host"] == NODE)
        assert code == 1 and report["unchecked_hosts"] == [NODE], report
        assert "could not read the kernel log" in entry["error"] and "Operation not permitted" in entry["error"]
    finally:
        unshadow(target, "dmesg", "journalctl")
    assert drift()[0] == 0


def test_a_hung_nvidia_smi_is_a_host_not_checked_and_the_run_ends(converged):
    """The host's limit on nvidia-smi (60 s) kills the stand-in; the control side's (--read-timeout)
    is above it here so that the lab's slower reads (NCCL inside the replicas) still answer."""
    target = converged[NODE]
    shadow(target, "nvidia-smi", "exec sleep 3600")
    try:
        started = time.monotonic()
        code, report = drift("--read-timeout", "150")
        assert time.monotonic() - started < 400
        by_host = {h["host"]: h for h in report["hosts"]}
        assert code == 1 and report["unchecked_hosts"] == [NODE], report
        assert by_host[NODE]["error"].startswith("timed out reading GPU health (nvidia-smi)"), by_host[NODE]["error"]
        assert by_host["gpu-node-1"]["error"] is None and by_host["lb-1"]["error"] is None
    finally:
        unshadow(target, "nvidia-smi")
    assert drift()[0] == 0
