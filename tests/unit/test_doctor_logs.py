"""A crashed replica's last log lines, classified (tests/fixtures/doctor/logs/, see its README)."""

from __future__ import annotations

import pytest

from gpufleet.doctor.logs import CLASSES, classify
from tests.unit.doctor_node import LOGS, text

CASES = [
    ("no-kernel-image.log", "no-kernel-image", "RuntimeError: CUDA error: no kernel image is available"),
    ("nccl-unhandled-cuda.log", "nccl", "NCCL error: unhandled cuda error"),
    ("cuda-oom.log", "cuda-oom", "torch.OutOfMemoryError: CUDA out of memory"),
    ("kv-cache-too-small.log", "kv-cache-too-small", "KV cache is needed, which is larger than the available"),
    ("gpu-memory-taken.log", "gpu-memory-taken", "Free memory on device (3.12/31.36 GiB)"),
    ("bad-flag.log", "bad-flag", "unrecognized arguments: --enable-turbo-mode"),
    ("model-not-found.log", "model-not-found", "Repository Not Found for url: https://huggingface.co/Qwen/Qwen3-32B-AWQX"),
]


@pytest.mark.parametrize("name,klass,line", CASES, ids=[c[1] for c in CASES])
def test_each_crash_log_gets_its_class_and_the_line_that_says_so(name, klass, line):
    verdict = classify(text(LOGS / name))
    assert verdict["class"] == klass
    assert line in verdict["line"]
    assert verdict["fix"]


def test_a_healthy_log_is_unknown():
    assert classify(text(LOGS / "healthy.log"))["class"] == "unknown"
    assert classify([])["class"] == "unknown"


def test_the_kernel_oom_killer_wins_over_the_log():
    verdict = classify(text(LOGS / "nccl-unhandled-cuda.log"), oom_killed=True)
    assert verdict["class"] == "host-oom" and verdict["line"] is None


def test_the_specific_cause_wins_over_its_consequence():
    # an OOM during NCCL set-up logs both: the OOM is the cause
    lines = text(LOGS / "nccl-unhandled-cuda.log") + text(LOGS / "cuda-oom.log")
    assert classify(lines)["class"] == "cuda-oom"


def test_every_class_is_covered_by_a_fixture():
    assert {c[1] for c in CASES} | {"gpu-not-visible", "shm", "port-in-use"} == {c.name for c in CLASSES}
    assert classify(["Failed to initialize NVML: Unknown Error"])["class"] == "gpu-not-visible"
    assert classify(["OSError: [Errno 98] error while attempting to bind on address ('0.0.0.0', 8000): "
                     "Address already in use"])["class"] == "port-in-use"
    assert classify(["RuntimeError: unable to write to file </torch_1_2650112043_0>: No space left on device (28)"]
                    )["class"] == "shm"


def test_shm_run_out_under_nccl_is_shm_not_nccl():
    """NCCL reports a full /dev/shm as its own warning, then a generic NCCL error: the cause is the
    shm (NCCL's include/shm.h lines as NCCL 2.7+ logs them, then torch's NCCL error)."""
    lines = [
        "4e9a7654171e:8639:8745 [0] include/shm.h:28 NCCL WARN Call to posix_fallocate failed : No space left on device",
        "4e9a7654171e:8639:8745 [0] NCCL INFO include/shm.h:41 -> 2",
        "4e9a7654171e:8639:8745 [0] include/shm.h:48 NCCL WARN Error while creating shared memory segment "
        "nccl-shm-recv-170206743cd9fd1d-0-1-0 (size 9637888)",
        "(VllmWorker rank=0 pid=212) ERROR torch.distributed.DistBackendError: NCCL error in: "
        "../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:3356, unhandled system error (run with NCCL_DEBUG=INFO "
        "for details), NCCL version 2.27.7",
    ]
    verdict = classify(lines)
    assert verdict["class"] == "shm" and "posix_fallocate failed : No space left on device" in verdict["line"]
    assert "vllm_shm_size" in verdict["fix"]
    # The neighbour: an NCCL error with room in /dev/shm stays an NCCL error.
    assert classify(lines[3:])["class"] == "nccl"
