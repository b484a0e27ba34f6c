#!/usr/bin/env python3
"""The plain all-reduce probe: the baseline files/nccl_acceptance.py is compared with.

Deliberately minimal and independent of the acceptance script (no pattern check, no topology, no
verdict): one process per rank, ``torch.distributed.all_reduce`` of a float32 tensor per size,
``--warmup`` untimed calls, then ``--iters`` timed calls between barriers, and nccl-tests'
definitions (algbw = bytes / time, busbw = algbw * 2(n-1)/n, GB = 1e9 bytes). Run it in the same
command and Python environment as the acceptance script; its busbw at 1 GiB is the reference
(the acceptance script must reach at least 0.9x of it).

    python files/allreduce_probe.py                      # NCCL, one rank per GPU, 1 MiB .. 1 GiB
    python files/allreduce_probe.py --backend gloo --world-size 2 --max-bytes 16MiB   # on CPUs

Prints one JSON object per size, then a summary object (``"summary": true``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time

MIB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sizes(low: int, high: int) -> list[int]:
    out, size = [], low
    while size <= high:
        out.append(size)
        size *= 2
    return out


def rank_main(rank: int, world: int, backend: str, port: int, byte_sizes: list[int], iters: int, warmup: int, results):
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=rank, world_size=world)
    for size in byte_sizes:
        tensor = torch.ones(size // 4, dtype=torch.float32, device=device)
        for _ in range(warmup):
            dist.all_reduce(tensor)
        if backend == "nccl":
            torch.cuda.synchronize(device)
        dist.barrier()
        start = time.perf_counter()
        for _ in range(iters):
            dist.all_reduce(tensor)
        if backend == "nccl":
            torch.cuda.synchronize(device)
        elapsed = (time.perf_counter() - start) / iters
        times = [None] * world
        dist.all_gather_object(times, elapsed)
        if rank == 0:
            results.put((size, max(times)))  # the slowest rank's mean, as nccl-tests reports
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=("nccl", "gloo"), default="nccl")
    parser.add_argument("--world-size", type=int)
    parser.add_argument("--min-bytes", type=lambda t: int(t.removesuffix("MiB")) * MIB, default=MIB)
    parser.add_argument("--max-bytes", type=lambda t: int(t.removesuffix("MiB")) * MIB, default=1024 * MIB)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)

    import torch
    import torch.multiprocessing as mp

    world = args.world_size or (torch.cuda.device_count() if args.backend == "nccl" else 2)
    if world < 1:
        print(json.dumps({"summary": True, "error": "no GPU for the nccl backend"}))
        return 1
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    byte_sizes = sizes(args.min_bytes, args.max_bytes)
    port = free_port()  # one rendezvous for every rank
    procs = [ctx.Process(target=rank_main, args=(r, world, args.backend, port, byte_sizes, args.iters, args.warmup,
                                                 results)) for r in range(world)]
    for p in procs:
        p.start()
    rows = []
    for _ in byte_sizes:
        size, seconds = results.get(timeout=1800)
        algbw = size / seconds / 1e9
        row = {"bytes": size, "time_us": round(seconds * 1e6, 1), "algbw_gbps": round(algbw, 3),
               "busbw_gbps": round(algbw * 2 * (world - 1) / world, 3)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    for p in procs:
        p.join()
    ok = all(p.exitcode == 0 for p in procs)
    print(json.dumps({"summary": True, "backend": args.backend, "world_size": world, "torch": torch.__version__,
                      "nccl": ".".join(map(str, torch.cuda.nccl.version())) if args.backend == "nccl" else None,
                      "busbw_at_max_gbps": rows[-1]["busbw_gbps"] if rows else None, "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
