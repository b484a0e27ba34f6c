"""Shared helpers for gpufleet facts: commands that never fail the host, and their envelope.

pyinfra fails a host when a fact's command exits non-zero. Hardware tools do exactly that when
something is wrong (nvidia-smi exits 9 when the driver is not loaded), which is when we most want
the fact. So every fact command is wrapped in sh so that it always exits 0 and reports the tool's
real exit status on a marker line; `envelope()` turns that back into
`{"status": "ok"|"failed"|"missing", "exit_code": N, "error": str|None}`.
"""

from __future__ import annotations

import re

MISSING = "__gpufleet_missing"
RC = "__gpufleet_rc="

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def wrap(tool: str, command: str) -> str:
    """Shell text that runs `command` (which uses `tool`) and always exits 0.

    Prints `__gpufleet_missing` when `tool` is not on the PATH, otherwise the command's stdout and
    stderr followed by `__gpufleet_rc=<exit status>`.
    """
    return (
        f"command -v {tool} >/dev/null 2>&1 || {{ echo {MISSING}; exit 0; }}; "
        f'{{ {command}; }} 2>&1; echo "{RC}$?"'
    )


def wrap_file(path: str) -> str:
    """Shell text that prints a readable file followed by the rc marker, or the missing marker."""
    # A file without a final newline must not swallow the marker line (it would read as garbage).
    return (f'if [ -r {path} ]; then cat {path} 2>&1; rc=$?; [ -z "$(tail -c1 {path})" ] || echo; '
            f'echo "{RC}$rc"; else echo {MISSING}; fi')


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def envelope(output: list[str], missing: str = "command not found") -> tuple[dict, list[str]]:
    """Split wrapped output into (status dict, the tool's own output lines).

    >>> envelope(["GPU 0: x", "__gpufleet_rc=0"])
    ({'status': 'ok', 'exit_code': 0, 'error': None}, ['GPU 0: x'])
    >>> envelope(["__gpufleet_missing"])[0]["status"]
    'missing'
    """
    lines = list(output)
    if any(line.strip() == MISSING for line in lines):
        return {"status": "missing", "exit_code": None, "error": missing}, []
    exit_code = None
    body = []
    for line in lines:
        if line.startswith(RC):
            try:
                exit_code = int(line[len(RC):].strip())
            except ValueError:
                exit_code = None
            continue
        body.append(line)
    if exit_code == 0:
        return {"status": "ok", "exit_code": 0, "error": None}, body
    error = " ".join(line.strip() for line in body if line.strip()) or "no output"
    return {"status": "failed", "exit_code": exit_code, "error": error}, body


def quote_all(words: list[str]) -> str:
    """Shell-quote each word and join with spaces (package names, paths)."""
    import shlex

    return " ".join(shlex.quote(w) for w in words)
