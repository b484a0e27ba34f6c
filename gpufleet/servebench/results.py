"""A serving benchmark's numbers: per target and concurrency, the fleet median, the slow ones, runs on disk.

Per (target, concurrency): requests and failures, requests/s, output tok/s, TTFT and inter-token
latency at p50/p99 (milliseconds), end-to-end latency p50. A target whose output tok/s is more
than ``warn_below`` % under the median of all targets at the same concurrency is flagged (with one
target there is nothing to compare). Each run is one JSON file in the results directory
(``GPUFLEET_STATE_DIR``/bench, default ``~/.local/state/gpufleet/bench``), named by its UTC start
time, so two runs can be compared (:func:`compare`).

>>> percentile([1.0, 2.0, 3.0, 4.0], 50), percentile([1.0, 2.0, 3.0, 4.0], 99)
(2.5, 3.97)
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from gpufleet.private_files import state_root
from gpufleet.servebench.client import LevelResult
from gpufleet.table import render_table


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    low, high = int(k), min(int(k) + 1, len(ordered) - 1)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (k - low), 6)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def summarize(target: str, level: LevelResult) -> dict[str, Any]:
    ok = [r for r in level.results if r.ok]
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    itls = [gap for r in ok for gap in r.itls]
    duration = level.duration or 1e-9
    return {
        "target": target, "concurrency": level.concurrency, "requests": len(level.results),
        "failed": len(level.results) - len(ok), "duration_s": round(level.duration, 3),
        "requests_per_s": round(len(ok) / duration, 3),
        "output_tokens": level.output_tokens, "output_tok_per_s": round(level.output_tokens / duration, 2),
        "ttft_ms_p50": _ms(percentile(ttfts, 50)), "ttft_ms_p99": _ms(percentile(ttfts, 99)),
        "itl_ms_p50": _ms(percentile(itls, 50)), "itl_ms_p99": _ms(percentile(itls, 99)),
        "latency_ms_p50": _ms(percentile([r.latency for r in ok], 50)),
        "errors": sorted({r.error for r in level.results if r.error})[:5],
    }


def slow_targets(rows: list[dict], warn_below: float) -> list[str]:
    """Warnings for targets more than ``warn_below`` % under their concurrency's median output tok/s."""
    warnings = []
    for concurrency in sorted({r["concurrency"] for r in rows}):
        level = [r for r in rows if r["concurrency"] == concurrency]
        if len(level) < 2:
            continue
        median = statistics.median(r["output_tok_per_s"] for r in level)
        for r in level:
            if median and r["output_tok_per_s"] < median * (1 - warn_below / 100):
                warnings.append(f"{r['target']} at concurrency {concurrency}: {r['output_tok_per_s']:.1f} output tok/s, "
                                f"{100 * (1 - r['output_tok_per_s'] / median):.0f}% below the fleet median "
                                f"{median:.1f} (threshold {warn_below:g}%)")
    return warnings


def render(run: dict) -> str:
    headers = ["TARGET", "CONC", "REQS", "FAIL", "REQ/S", "OUT TOK/S", "TTFT p50", "TTFT p99", "ITL p50", "ITL p99"]
    rows = [[r["target"], r["concurrency"], r["requests"], r["failed"], f"{r['requests_per_s']:.2f}",
             f"{r['output_tok_per_s']:.1f}", *(_fmt(r[k]) for k in ("ttft_ms_p50", "ttft_ms_p99", "itl_ms_p50",
                                                                     "itl_ms_p99"))] for r in run["rows"]]
    cfg = run["config"]
    lines = [f"through {cfg['through']}, input {cfg['input_len']} tokens, output {cfg['output_len']} tokens, "
             f"model {cfg['model']} (latencies in ms)", render_table(headers, rows)]
    lines += [f"warning: {w}" for w in run["warnings"]]
    lines += [f"errors at {r['target']} (concurrency {r['concurrency']}): {'; '.join(r['errors'])}"
              for r in run["rows"] if r["failed"]]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def results_dir(explicit: str | None = None) -> Path:
    if explicit:
        return Path(explicit)
    return state_root() / "bench"


def save(run: dict, directory: Path) -> Path:
    """Write the run as ``<UTC start>-<through>.json`` (never overwriting an earlier run)."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(run["started"]))
    path = directory / f"{stamp}-{run['config']['through']}.json"
    n = 1
    while path.exists():
        path = directory / f"{stamp}-{run['config']['through']}-{n}.json"
        n += 1
    path.write_text(json.dumps(run, indent=2) + "\n")
    return path


def compare(previous: dict, current: dict) -> str:
    """Output tok/s and TTFT p50 of two runs side by side, per target and concurrency."""
    before = {(r["target"], r["concurrency"]): r for r in previous["rows"]}
    rows = []
    for r in current["rows"]:
        old = before.get((r["target"], r["concurrency"]))
        if old is None:
            continue
        change = (r["output_tok_per_s"] / old["output_tok_per_s"] - 1) * 100 if old["output_tok_per_s"] else None
        rows.append([r["target"], r["concurrency"], f"{old['output_tok_per_s']:.1f}", f"{r['output_tok_per_s']:.1f}",
                     "-" if change is None else f"{change:+.0f}%", _fmt(old["ttft_ms_p50"]), _fmt(r["ttft_ms_p50"])])
    if not rows:
        return "no target and concurrency in common with the earlier run"
    return render_table(["TARGET", "CONC", "OUT TOK/S before", "after", "change", "TTFT p50 before", "after"], rows)
