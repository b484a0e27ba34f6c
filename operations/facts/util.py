"""Shared helpers for gpufleet facts: one envelope for every read, and its parser.

pyinfra fails a host when a fact's command exits non-zero. Hardware tools do exactly that when
something is wrong (nvidia-smi exits 9 when the driver is not loaded), which is when we most want
the fact. So every fact's command is built here and has one shape, the envelope: it always exits
0, prints the read's own output, and ends with a status line::

    <the read's output>
    __gpufleet_timeout=60     (only when the read was killed at its time limit)
    __gpufleet_rc=<the read's exit status>

or prints only ``__gpufleet_missing`` when the tool it reads is not installed. A read of several
steps (KernelXids: ``dmesg``, then ``journalctl``) prints each step's output, then the one status. (The
two scripts of doctor.py are sections of this shape, one per tool, built in their own shell.)

* :func:`wrap` reads a tool (its stdout and stderr; missing when the tool is not on the PATH),
  :func:`wrap_file` a file (missing when it is not readable), :func:`wrap_answer` anything else:
  a read whose answer is what it prints on stdout, printing nothing included (``apt-cache policy``
  of an unknown package).
* :func:`envelope` splits the output into ``{"status": "ok"|"failed"|"missing", "exit_code": N,
  "error": str|None}`` and the read's own lines; :func:`answer` (on top of it) gives the lines of
  a :func:`wrap_answer` read, whose exit status is part of its answer unless the fact says a
  failed read is no answer (``strict``: pyinfra then fails the host, as for a failing command).

Every remote read has a time limit on the host (:func:`timed`: coreutils ``timeout``, TERM then
KILL; in the prefetch, the one of its lane: operations/read_lanes.py), so a hung tool (``nvidia-smi`` with a GPU fallen off the bus, a wedged dockerd) cannot stall
the run. A read that timed out is never taken for an answer ("no containers", "driver not loaded"
would make operations act: recreate, reboot): :func:`envelope` raises :class:`ReadTimedOut`, a
pyinfra FactProcessError, so pyinfra fails that host (nothing runs on it) and ``gpufleet drift``
reports it "not checked", naming the read. A process stuck in the kernel (D state) ignores even
KILL: the control side's own limit on each command (``_timeout``, gpufleet.host_reads) covers that
case.

Example (a fact in this style)::

    class KernelFlavours(FactBase):
        command = wrap_answer("dpkg-query -W -f='${Package} ${db:Status-Abbrev}\\n' 'linux-image-*' 2>/dev/null")

        def process(self, output):
            return kernel_flavours(answer(output))  # ReadTimedOut if dpkg-query hung
"""

from __future__ import annotations

import re
import shlex

from pyinfra.api.exceptions import FactProcessError

MISSING = "__gpufleet_missing"
RC = "__gpufleet_rc="
TIMED_OUT = "__gpufleet_timeout="
READ_LIMIT_S = 60  # per remote read; the control side waits longer (gpufleet.host_reads.READ_TIMEOUT_S)
KILL_AFTER_S = 5
# Set by the prefetch's time-limited lanes (operations/read_lanes.py): a read there has no limit of its own.
LANE_LIMITED = "__gpufleet_lane_limit"
# coreutils timeout: 124 when it sent TERM, 137 (128 + KILL) when the tool ignored TERM.
TIMEOUT_CODES = (124, 137)

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def timed(command: str, limit: int = READ_LIMIT_S) -> str:
    """`command` (shell text) under a time limit: TERM after `limit` seconds, KILL 5 s later.

    ``timeout`` puts the command in a process group of its own; whatever is left in that group when
    it returns (a child that ignored TERM while its parent shell died) is killed too, so that no
    straggler keeps the output open and the read waiting. The exit status is the command's, or
    ``timeout``'s 124/137.

    In a lane of the prefetch (``$__gpufleet_lane_limit`` set: operations/read_lanes.py) the lane's
    one ``timeout`` is the limit, and the command runs here, in this subshell, without a ``timeout``
    and a ``sh`` of its own (two process starts per read).

    >>> for part in timed("nvidia-smi -L", 30).split("; "): print(part)
    ( __gpufleet_c='nvidia-smi -L'
    if [ -n "${__gpufleet_lane_limit-}" ]
    then eval "$__gpufleet_c"
    exit
    fi
    timeout -k 5 30 sh -c "$__gpufleet_c" & t=$!
    wait $t
    rc=$?
    kill -KILL -$t 2>/dev/null
    exit $rc )
    """
    return (f'( __gpufleet_c={shlex.quote(command)}; if [ -n "${{{LANE_LIMITED}-}}" ]; then eval "$__gpufleet_c"; '
            f'exit; fi; timeout -k {KILL_AFTER_S} {int(limit)} sh -c "$__gpufleet_c" & t=$!; wait $t; rc=$?; '
            "kill -KILL -$t 2>/dev/null; exit $rc )")


class ReadTimedOut(FactProcessError):
    """A fact's read the host killed at its time limit: pyinfra fails the host as for any fact it
    cannot process; operations/fact_prefetch.py does not read it again (it would wait as long)."""


def raise_on_timeout(output: list[str]) -> None:
    """Raise ReadTimedOut (a FactProcessError) when the output says the read was killed at its limit.

    :func:`envelope` calls it for every read that did not exit 0.

    >>> raise_on_timeout(["ii libnccl2", "__gpufleet_timeout=60"])
    Traceback (most recent call last):
    ...
    operations.facts.util.ReadTimedOut: no answer within 60 s (killed on the host)
    """
    for line in output:
        if line.startswith(TIMED_OUT):
            raise ReadTimedOut(f"no answer within {line[len(TIMED_OUT):].strip()} s (killed on the host)")


def timed_out_lines(lines: list[str]) -> list[str] | None:
    """The status lines of a read killed at its time limit (``__gpufleet_timeout=…`` and the rc
    line), or None when it was not. A batch of reads that timed out (operations/fact_batches.py)
    answers each of them so: each alone would have waited for the same hung tool, and a read the
    host timed out is not read again (operations/fact_prefetch.py).

    >>> timed_out_lines(["x", "__gpufleet_timeout=60", "__gpufleet_rc=124"])
    ['__gpufleet_timeout=60', '__gpufleet_rc=124']
    """
    status = [line for line in lines if line.startswith((TIMED_OUT, RC))]
    return status if any(line.startswith(TIMED_OUT) for line in status) else None


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

    >>> wrap("nvidia-smi", "nvidia-smi -L").startswith("command -v nvidia-smi >/dev/null 2>&1 || ")
    True
    """
    return (
        f"command -v {tool} >/dev/null 2>&1 || {{ echo {MISSING}; exit 0; }}; "
        f"{timed(command, limit)} 2>&1; {_status_lines(limit)}"
    )


def wrap_file(path: str, limit: int = READ_LIMIT_S) -> str:
    """Shell text that prints a readable file followed by the rc marker, or the missing marker.

    The read is time-limited too: /proc files of a wedged driver can block their readers.
    `path` is shell text (quote it if it needs quoting).
    """
    # $(...) drops trailing newlines and printf puts one back: a file without a final newline
    # cannot swallow the marker line.
    show = 'printf "%s\\n" "$out"; '
    return (f"if [ -r {path} ]; then out=$( {timed(f'cat {path}', limit)} 2>&1); "
            f"{_status_lines(limit, then=show)}; else echo {MISSING}; fi")


def wrap_answer(command: str, limit: int = READ_LIMIT_S) -> str:
    """Shell text that runs `command` (shell text: one step or several) and always exits 0: its
    stdout, then `__gpufleet_rc=<exit status of its last step>`; killed after `limit` seconds
    (then `__gpufleet_timeout=<limit>` comes before the rc line).

    For reads whose answer is what they print, nothing included: no missing marker (a step that
    needs a missing tool prints what it prints without it), and stderr is left out of the answer,
    as pyinfra leaves it out of a fact's output. Parse the output with :func:`answer`.

    >>> for part in wrap_answer("cat /etc/hostname", 10).split("; ")[5:]: print(part)
    timeout -k 5 10 sh -c "$__gpufleet_c" & t=$!
    wait $t
    rc=$?
    kill -KILL -$t 2>/dev/null
    exit $rc )
    rc=$?
    for t in 124 137
    do [ "$rc" != "$t" ] || echo "__gpufleet_timeout=10"
    done
    echo "__gpufleet_rc=$rc"
    """
    return f"{timed(command, limit)}; {_status_lines(limit)}"


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def _markers_on_their_own_lines(output: list[str]) -> list[str]:
    """A read whose output does not end in a newline (a tool killed mid-line: stdio writes to a
    pipe in blocks) has the status line glued to its last line: split it off again, so that a
    read killed at its limit is never taken for an answer.

    >>> _markers_on_their_own_lines(["pkg\\tlibnccl2\\t2.27__gpufleet_timeout=60", "__gpufleet_rc=124"])
    ['pkg\\tlibnccl2\\t2.27', '__gpufleet_timeout=60', '__gpufleet_rc=124']
    """
    lines = []
    for line in output:
        cut = min((i for i in (line.find(TIMED_OUT), line.find(RC)) if i > 0), default=-1)
        if cut > 0:
            lines += [line[:cut], *_markers_on_their_own_lines([line[cut:]])]
        else:
            lines.append(line)
    return lines


def envelope(output: list[str], missing: str = "command not found") -> tuple[dict, list[str]]:
    """Split enveloped output into (status dict, the read's own output lines).

    >>> envelope(["GPU 0: x", "__gpufleet_rc=0"])
    ({'status': 'ok', 'exit_code': 0, 'error': None}, ['GPU 0: x'])
    >>> envelope(["__gpufleet_missing"])[0]["status"]
    'missing'
    >>> envelope(["__gpufleet_timeout=60", "__gpufleet_rc=124"])
    Traceback (most recent call last):
    ...
    operations.facts.util.ReadTimedOut: no answer within 60 s (killed on the host)
    """
    lines = _markers_on_their_own_lines(output)
    if any(line.strip() == MISSING for line in lines):
        return {"status": "missing", "exit_code": None, "error": missing}, []
    exit_code = None
    timed_out = []
    body = []
    for line in lines:
        if line.startswith(TIMED_OUT):
            timed_out.append(line)
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
    raise_on_timeout(timed_out)
    error = " ".join(line.strip() for line in body if line.strip()) or "no output"
    return {"status": "failed", "exit_code": exit_code, "error": error}, body


def answer(output: list[str], strict: bool = False) -> list[str]:
    """The output lines of a :func:`wrap_answer` read, through :func:`envelope`.

    Its exit status is part of the answer (``dpkg-query`` exits 1 for a package it does not know),
    unless `strict`: then a read that exited non-zero is no answer and raises FactProcessError
    (pyinfra fails the host, as it does for a fact command that fails). A read killed at its time
    limit is never an answer: ReadTimedOut.

    >>> answer(["marker", "__gpufleet_rc=1"])
    ['marker']
    >>> answer(["__gpufleet_rc=1"], strict=True)
    Traceback (most recent call last):
    ...
    pyinfra.api.exceptions.FactProcessError: the read failed (exit 1): no output
    >>> answer(["__gpufleet_timeout=60", "__gpufleet_rc=124"])
    Traceback (most recent call last):
    ...
    operations.facts.util.ReadTimedOut: no answer within 60 s (killed on the host)
    """
    result, body = envelope(output)
    if strict and result["status"] != "ok":
        raise FactProcessError(f"the read failed (exit {result['exit_code']}): {result['error']}")
    return body


def quote_all(words: list[str]) -> str:
    """Shell-quote each word and join with spaces (package names, paths)."""
    return " ".join(shlex.quote(w) for w in words)
