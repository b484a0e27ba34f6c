"""`gpufleet bench serve`: load the fleet's endpoints one at a time and keep the numbers.

Targets come from the inventory: ``--through lb`` benchmarks each load balancer
(``http://<address>:<lb_port>``, so nginx and every replica behind it), ``--through node`` each
vLLM replica directly (``http://<node address>:<port>``), which is what finds the slow node.
``--url`` replaces them with explicit endpoints (the lab's load balancer is published on
127.0.0.1: `gpufleet lab welcome` prints its URL). Targets run one after the other, each with a
warm-up request first, at each ``--concurrency`` level, so they never compete for the same
replicas. The served model name and the API key (from ``vllm_api_key_file``, on the control host)
are the fleet's.

Example::

    run = benchmark([Target("lb-01", "http://10.40.0.21:80")], "qwen3-32b-awq", levels=[1, 8],
                    requests=None, input_len=512, output_len=128)
    print(results.render(run))
"""

from __future__ import annotations

import fnmatch
import ipaddress
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpufleet.fleet import replicas_of
from gpufleet.servebench import results
from gpufleet.servebench.client import run_level, stream_completion

DEFAULT_WARN_BELOW = 20.0  # % under the fleet median output tok/s that is worth a warning


@dataclass(frozen=True)
class Target:
    name: str
    url: str


def _host(address: str) -> str:
    try:
        return f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    except ValueError:
        return address  # a name (the lab's Docker network resolves inventory names)


def targets(fleet, through: str, limit=()) -> list[Target]:
    """The endpoints ``--through lb|node`` names, narrowed by ``--limit`` host names or globs."""
    def chosen(name: str) -> bool:
        return not limit or any(fnmatch.fnmatch(name, pattern) for pattern in limit)

    if through == "lb":
        # An lb with TLS (lb_tls_cert_file) is asked over https; its CA must be trusted here (SSL_CERT_FILE).
        return [Target(h.name, f"{'https' if h.settings.lb_tls_cert_file else 'http'}://{_host(h.address)}:"
                               f"{h.settings.lb_port}") for h in fleet.load_balancers if chosen(h.name)]
    found = []
    for node in fleet.nodes:
        if not chosen(node.name):
            continue
        bind = node.settings.vllm_bind_address
        address = bind if bind and bind not in ("0.0.0.0", "::") else node.address
        found += [Target(r.name, f"http://{_host(address)}:{r.port}") for r in replicas_of(node)]
    return found


def model_and_key(fleet) -> tuple[str, str | None]:
    """The served model name and the API key clients must send (None when the fleet sets none)."""
    from gpufleet.doctor.redact import read_secret_file

    node = (fleet.nodes or list(fleet.hosts.values()))[0]
    key_file = node.settings.vllm_api_key_file
    return node.settings.vllm_served_model_name, read_secret_file(key_file) if key_file else None


def benchmark(endpoints: list[Target], model: str, levels: list[int], requests: int | None, input_len: int,
              output_len: int, api_key: str | None = None, warn_below: float = DEFAULT_WARN_BELOW,
              through: str = "lb", timeout: float = 600) -> dict[str, Any]:
    """Run every level on every target; the run as a dict (config, rows, warnings)."""
    started = time.time()
    rows = []
    for seed, target in enumerate(endpoints):
        stream_completion(target.url, model, [1] * 8, 2, api_key, timeout)  # warm-up: connections, caches
        for concurrency in levels:
            count = requests or max(20, 4 * concurrency)
            level = run_level(target.url, model, concurrency, count, input_len, output_len, api_key,
                              seed=seed * 1000 + concurrency, timeout=timeout)
            rows.append(results.summarize(target.name, level))
    return {"started": started, "finished": time.time(),
            "config": {"through": through, "model": model, "input_len": input_len, "output_len": output_len,
                       "levels": levels, "requests": requests, "warn_below": warn_below,
                       "targets": {t.name: t.url for t in endpoints},
                       "client": "gpufleet.servebench.client (streaming /v1/completions; not vLLM's bench client)"},
            "rows": rows, "warnings": results.slow_targets(rows, warn_below)}


def exit_code(run: dict[str, Any]) -> int:
    """0 every request answered and no slow target, 2 failures or a slow target."""
    return 2 if run["warnings"] or any(r["failed"] for r in run["rows"]) else 0


def keep(run: dict[str, Any], directory: str | None = None) -> Path:
    return results.save(run, results.results_dir(directory))
