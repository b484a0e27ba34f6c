"""The plain all-reduce probe (issue 15's baseline) runs on CPUs with gloo and reports nccl-tests' numbers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = Path(__file__).resolve().parents[2] / "files/allreduce_probe.py"


def test_gloo_two_ranks_reports_every_size_with_busbw_as_nccl_tests_defines_it():
    pytest.importorskip("torch", reason="torch is in the test extra (pyproject.toml)")
    run = subprocess.run([sys.executable, str(PROBE), "--backend", "gloo", "--world-size", "2",
                          "--min-bytes", "1MiB", "--max-bytes", "4MiB", "--iters", "3", "--warmup", "1"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    rows, summary = lines[:-1], lines[-1]
    assert [r["bytes"] for r in rows] == [1 << 20, 2 << 20, 4 << 20]
    for r in rows:
        algbw = r["bytes"] / (r["time_us"] / 1e6) / 1e9
        assert r["algbw_gbps"] == pytest.approx(algbw, rel=0.01)
        assert r["busbw_gbps"] == pytest.approx(r["algbw_gbps"] * 2 * (2 - 1) / 2, rel=0.01)
    assert summary["summary"] and summary["ok"] and summary["world_size"] == 2
    assert summary["busbw_at_max_gbps"] == rows[-1]["busbw_gbps"]
