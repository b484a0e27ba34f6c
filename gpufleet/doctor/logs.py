"""Why a vLLM replica died, from the last lines of its log: one class, the line that says so, the fix.

The patterns are vLLM's, torch's, NCCL's and huggingface_hub's own messages, as they appear in
``docker logs`` of crashed replicas (tests/fixtures/doctor/logs/, see its README for the issues
each excerpt comes from). Classes are tried in the order of :data:`CLASSES`, most specific first:
a replica that ran out of memory while NCCL set up reports the OOM, not the NCCL error it caused,
and one whose /dev/shm ran out under NCCL reports the shm.

>>> classify(["RuntimeError: CUDA error: no kernel image is available for execution on the device"])["class"]
'no-kernel-image'
>>> classify(["INFO 05-26 07:50:26 [cuda.py:221] Using Flash Attention backend on V1 engine."])["class"]
'unknown'
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class LogClass:
    name: str
    label: str
    pattern: re.Pattern
    fix: str


def _c(name: str, label: str, pattern: str, fix: str) -> LogClass:
    return LogClass(name, label, re.compile(pattern, re.IGNORECASE), fix)


CLASSES: tuple[LogClass, ...] = (
    _c("no-kernel-image", "no kernel image for these GPUs",
       r"no kernel image is available for execution on the device",
       "the image's torch/vLLM kernels are not built for this GPU's architecture (sm_120 on RTX 5090): use a "
       "vllm_image built for it (CUDA >= 12.8 with sm_120; see cuda.arch-missing) and roll it out"),
    _c("gpu-memory-taken", "GPU memory already taken at start",
       r"Free memory on device .* is less than desired GPU memory utilization",
       "another process holds GPU memory on this replica's GPUs (see memory.gpu-busy): stop it, or lower "
       "vllm_gpu_memory_utilization"),
    _c("kv-cache-too-small", "KV cache too small for max_model_len",
       r"larger than the available KV cache memory|larger than the maximum number of tokens that can be stored in "
       r"KV cache|No available memory for the cache blocks",
       "the replica cannot hold one max_model_len sequence: lower vllm_max_model_len or raise "
       "vllm_gpu_memory_utilization (`gpufleet plan` gives the numbers; see memory.plan-does-not-fit)"),
    _c("cuda-oom", "CUDA out of memory",
       r"CUDA out of memory|torch\.OutOfMemoryError|CUDA error: out of memory",
       "the weights, activations or CUDA graphs do not fit: check `gpufleet plan` for the replica's flags "
       "(memory.plan-does-not-fit), lower vllm_max_model_len / vllm_gpu_memory_utilization or use TP=2"),
    # Before nccl: a full /dev/shm is an NCCL warning ("NCCL WARN Call to posix_fallocate failed : No
    # space left on device"), then NCCL's "unhandled system error"; the shm is the cause.
    _c("shm", "shared memory exhausted",
       r"No space left on device|Bus error|shm.{0,40}(?:too small|insufficient)|unable to (?:write|allocate|mmap).{0,60}shm",
       "/dev/shm is too small for NCCL's SHM transport and vLLM's shared-memory broadcast: raise vllm_shm_size "
       "(see nccl.shm-too-small)"),
    _c("nccl", "NCCL error",
       r"NCCL error|ncclUnhandledCudaError|ncclSystemError|ncclInternalError|unhandled cuda error|NCCL WARN",
       "check the NCCL vLLM loads against the pin (nccl.version-not-pinned), PCIe ACS (nccl.acs-redirect) and "
       "/dev/shm (nccl.shm-too-small); `gpufleet verify --nccl` on a drained node reproduces it"),
    _c("bad-flag", "vLLM refused a command-line flag",
       r"error: unrecognized arguments|error: argument --|error: invalid choice|error: the following arguments",
       "a vllm_extra_args flag this vLLM version does not know (or a flag too new for vllm_image): fix the "
       "flag or the image, then roll it out"),
    _c("model-not-found", "model not found or not authorised",
       r"RepositoryNotFoundError|Repository Not Found|is not a valid model identifier|GatedRepoError|"
       r"401 Client Error|403 Client Error|HFValidationError|does not appear to have a file named config\.json",
       "check vllm_model (the Hugging Face id or the path inside the container) and, for a gated model, "
       "vllm_hf_token_file; a node without internet needs the weights in vllm_hf_cache_dir"),
    _c("gpu-not-visible", "the container sees no GPU",
       r"Failed to initialize NVML|no CUDA-capable device is detected|CUDA driver version is insufficient|"
       r"No CUDA GPUs are available|could not select device driver",
       "the container did not get the GPUs: see the toolkit findings (runtime in daemon.json, a pending "
       "Docker restart, a daemon-reload that detached them) and the driver findings"),
    _c("port-in-use", "port already in use",
       r"Address already in use",
       "another process listens on the replica's port: find it (`ss -ltnp`) or change the replica's port"),
)

_SOURCE = re.compile(r"\braise\b|File \"")
HOST_OOM = LogClass("host-oom", "killed by the kernel's OOM killer (host RAM)", re.compile(r"$^"),
                    "the container used more host memory than the node has: lower --max-num-seqs/swap space, "
                    "or add RAM; `dmesg` shows the OOM kill")
UNKNOWN = LogClass("unknown", "no known cause in the log", re.compile(r"$^"),
                   "read the log excerpt; `docker logs vllm-...` on the node shows the whole log")


def classify(lines: list[str], oom_killed: bool = False) -> dict:
    """``{"class", "label", "line", "fix"}`` for a crashed replica's log lines.

    ``oom_killed`` is docker's State.OOMKilled: the kernel killed it, whatever the log says.
    """
    if oom_killed:
        return {"class": HOST_OOM.name, "label": HOST_OOM.label, "line": None, "fix": HOST_OOM.fix}
    for klass in CLASSES:
        matches = [line for line in lines if klass.pattern.search(line)]
        if matches:
            # The exception's own message, not the source line that raised it (`raise RuntimeError(f"NCCL error: ...`).
            said = [line for line in matches if not _SOURCE.search(line)] or matches
            return {"class": klass.name, "label": klass.label, "line": said[-1].strip(), "fix": klass.fix}
    return {"class": UNKNOWN.name, "label": UNKNOWN.label, "line": None, "fix": UNKNOWN.fix}
