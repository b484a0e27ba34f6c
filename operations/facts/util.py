"""Shared helpers for gpufleet facts: commands that never fail the host, and their envelope.

pyinfra fails a host when a fact's command exits non-zero. Hardware tools do exactly that when
something is wrong (nvidia-smi exits 9 when the driver is not loaded), which is when we most want
the fact. So every fact command is wrapped in sh so that it always exits 0 and reports the tool's
real exit status on a marker line; `envelope()` turns that back into
`{"status": "ok"|"failed"|"missing", "exit_code": N, "error": str|None}`.

Every remote read has a time limit on the host (`timed`: coreutils `timeout`, TERM then KILL), so a
hung tool (``nvidia-smi`` with a GPU fallen off the bus, a wedged dockerd) cannot stall the run. A
read that timed out is never taken for an answer ("no containers", "driver not loaded" would make
operations act: recreate, reboot): `envelope()` raises pyinfra's FactProcessError, so pyinfra fails
that host (nothing runs on it) and ``gpufleet drift`` reports it "not checked", naming the read. A
process stuck in the kernel (D state) ignores even KILL: the control side's own limit on each
command (``_timeout``, gpufleet.host_reads) covers that case.
"""

from __future__ import annotations

import re

from pyinfra.api.exceptions import FactProcessError

MISSING = "__gpufleet_missing"
RC = "__gpufleet_rc="
TIMED_OUT = "__gpufleet_timeout="
READ_LIMIT_S = 60  # per remote read; the control side waits longer (gpufleet.host_reads.READ_TIMEOUT_S)
KILL_AFTER_S = 5
# coreutils timeout: 124 when it sent TERM, 137 (128 + KILL) when the tool ignored TERM.
TIMEOUT_CODES = (124, 137)

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def timed(command: str, limit: int = READ_LIMIT_S) -> str:
    """`command` (shell text) under a time limit: TERM after `limit` seconds, KILL 5 s later.

    ``timeout`` puts the command in a process group of its own; whatever is left in that group when
    it returns (a child that ignored TERM while its parent shell died) is killed too, so that no
    straggler keeps the output open and the read waiting. The exit status is the command's, or
    ``timeout``'s 124/137.

    >>> timed("nvidia-smi -L", 30)
    "( timeout -k 5 30 sh -c 'nvidia-smi -L' & t=$!; wait $t; rc=$?; kill -KILL -$t 2>/dev/null; exit $rc )"
    """
    import shlex

    return (f"( timeout -k {KILL_AFTER_S} {int(limit)} sh -c {shlex.quote(command)} & t=$!; wait $t; rc=$?; "
            "kill -KILL -$t 2>/dev/null; exit $rc )")


def timed_step(command: str, limit: int = READ_LIMIT_S) -> str:
    """One step of a fact that prints several things: `command` under the limit, and a line
    ``__gpufleet_timeout=<limit>`` if it was killed (see :func:`raise_on_timeout`)."""
    codes = " ".join(str(c) for c in TIMEOUT_CODES)
    return (f'{timed(command, limit)}; rc=$?; for t in {codes}; do [ "$rc" != "$t" ] || '
            f'echo "{TIMED_OUT}{int(limit)}"; done')


class ReadTimedOut(FactProcessError):
    """A fact's read the host killed at its time limit: pyinfra fails the host as for any fact it
    cannot process; operations/fact_prefetch.py does not read it again (it would wait as long)."""


def raise_on_timeout(output: list[str]) -> None:
    """Raise ReadTimedOut (a FactProcessError) when a step of the fact was killed for taking too long.

    >>> raise_on_timeout(["ii libnccl2", "__gpufleet_timeout=60"])
    Traceback (most recent call last):
    ...
    operations.facts.util.ReadTimedOut: no answer within 60 s (killed on the host)
    """
    for line in output:
        if line.startswith(TIMED_OUT):
            raise ReadTimedOut(f"no answer within {line[len(TIMED_OUT):].strip()} s (killed on the host)")


def _status_lines(limit: int, then: str = "") -> str:
    # Right after the timed command: keep its status, run `then`, say whether it timed out (with
    # the limit), then print its exit status.
    codes = " ".join(str(c) for c in TIMEOUT_CODES)
    return (f'rc=$?; {then}for t in {codes}; do [ "$rc" != "$t" ] || echo "{TIMED_OUT}{int(limit)}"; done; '
            f'echo "{RC}$rc"')


def wrap(tool: str, command: str, limit: int = READ_LIMIT_S) -> str:
    """Shell text that runs `command` (which uses `tool`) and always exits 0.

    Prints `__gpufleet_missing` when `tool` is not on the PATH, otherwise the command's stdout and
    stderr followed by `__gpufleet_rc=<exit status>`; the command is killed after `limit` seconds
    (then `__gpufleet_timeout=<limit>` comes before the rc line).
    """
    return (
        f"command -v {tool} >/dev/null 2>&1 || {{ echo {MISSING}; exit 0; }}; "
        f"{timed(command, limit)} 2>&1; {_status_lines(limit)}"
    )


def wrap_file(path: str, limit: int = READ_LIMIT_S) -> str:
    """Shell text that prints a readable file followed by the rc marker, or the missing marker.

    The read is time-limited too: /proc files of a wedged driver can block their readers.
    """
    # $(...) drops trailing newlines and printf puts one back: a file without a final newline
    # cannot swallow the marker line.
    show = 'printf "%s\\n" "$out"; '
    return (f"if [ -r {path} ]; then out=$(timeout -k {KILL_AFTER_S} {int(limit)} cat {path} 2>&1); "
            f"{_status_lines(limit, then=show)}; else echo {MISSING}; fi")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def envelope(output: list[str], missing: str = "command not found") -> tuple[dict, list[str]]:
    """Split wrapped output into (status dict, the tool's own output lines).

    >>> envelope(["GPU 0: x", "__gpufleet_rc=0"])
    ({'status': 'ok', 'exit_code': 0, 'error': None}, ['GPU 0: x'])
    >>> envelope(["__gpufleet_missing"])[0]["status"]
    'missing'
    >>> envelope(["__gpufleet_timeout=60", "__gpufleet_rc=124"])
    Traceback (most recent call last):
    ...
    operations.facts.util.ReadTimedOut: no answer within 60 s (killed on the host)
    """
    lines = list(output)
    if any(line.strip() == MISSING for line in lines):
        return {"status": "missing", "exit_code": None, "error": missing}, []
    exit_code = None
    limit = None
    body = []
    for line in lines:
        if line.startswith(TIMED_OUT):
            limit = line[len(TIMED_OUT):].strip()
            continue
        if line.startswith(RC):
            try:
                exit_code = int(line[len(RC):].strip())
            except ValueError:
                exit_code = None
            continue
        body.append(line)
    if exit_code == 0:
        return {"status": "ok", "exit_code": 0, "error": None}, body
    if limit is not None:
        raise_on_timeout([f"{TIMED_OUT}{limit}"])
    error = " ".join(line.strip() for line in body if line.strip()) or "no output"
    return {"status": "failed", "exit_code": exit_code, "error": error}, body


def quote_all(words: list[str]) -> str:
    """Shell-quote each word and join with spaces (package names, paths)."""
    import shlex

    return " ".join(shlex.quote(w) for w in words)
