"""The rollout's reads of a node's vLLM replicas: requests in flight, readiness, the NCCL it loads."""

from __future__ import annotations

import shlex
import time

from gpufleet.remote import shell


def in_flight_command(url: str) -> str:
    """Shell printing running + waiting requests of one replica (vLLM's /metrics), or ``-`` when it does not answer."""
    return (f"m=$(curl -s --max-time 5 {shlex.quote(url + '/metrics')}) && "
            "echo \"$m\" | awk '/^vllm:num_requests_(running|waiting)[{ ]/ {s += $NF} END {print s + 0}' || echo -")


def parse_in_flight(text: str) -> int | None:
    last = (text.strip().splitlines() or ["-"])[-1].strip()
    try:
        return int(float(last))
    except ValueError:
        return None


def wait_idle(host, urls: list[str], timeout: float, interval: float = 0.5, quiet_reads: int = 2) -> tuple[bool, str]:
    """Wait until every replica has no request running or waiting; ``(idle, what was seen last)``.

    Idle means ``quiet_reads`` readings in a row (half a second apart), so that a request an old
    nginx worker sent just after the reload is counted. What still arrives later is not lost: vLLM's
    ``--shutdown-timeout`` finishes what it accepted when the update stops the container, and a
    connection refused after that is passed to another member by nginx (``proxy_next_upstream
    error``: the request was never sent). A replica that does not answer /metrics has nothing in
    flight that a drain could save.
    """
    started = time.monotonic()
    quiet = 0
    while True:
        counts = {}
        for url in urls:
            ok, out = shell(host, in_flight_command(url), timeout=30)
            counts[url] = parse_in_flight(out) if ok else None
        busy = {u: n for u, n in counts.items() if n}
        quiet = 0 if busy else quiet + 1
        if quiet >= quiet_reads:
            return True, f"idle after {time.monotonic() - started:.1f}s"
        if time.monotonic() - started >= timeout:
            return False, f"still busy after {timeout:.0f}s: " + ", ".join(f"{u} {n} requests" for u, n in busy.items())
        time.sleep(interval)
