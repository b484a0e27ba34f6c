"""The prefetch's one command (operations/fact_prefetch.py): a host's reads in concurrent lanes, one
time limit per lane, and what came back.

Every gpufleet read has a time limit of its own (operations/facts/util.timed: coreutils ``timeout``
and a ``sh -c`` of its own), so that a hung tool cannot stall the run. Two process starts per read:
46 of the 103 processes a lab GPU node started for a no-op converge, 58 of 132 for a drift (~40 and
~55 ms of its CPU). In the prefetch the reads of a lane share one limit instead: the lane runs under one
``timeout`` of ``LANE_LIMIT_S`` (each read's own, ``READ_LIMIT_S``), and sets ``__gpufleet_lane_limit``,
under which a read runs in its own subshell without a ``timeout`` of its own (util.timed). What a
hung tool does then:

* the lane is killed at its limit, no later than the read's own limit would have killed it, and
  whatever is left of it (a tool that ignored TERM) with it;
* the read it was running is answered as timed out, the marker its own limit prints
  (``__gpufleet_timeout=60``), when it had printed nothing for about the whole limit itself (its
  file's last write, read with one ``stat`` only then): the fact fails the host and is not read
  again (util.ReadTimedOut). A read that only ran the lane's last seconds (the reads before it used
  the rest: a slow dockerd) is not taken for hung: no answer;
* so are the reads after it in that lane, which never ran, and pyinfra's own facts (no limit of
  their own): pyinfra reads each itself, under its own limit, after the prefetch.

A read with a limit other than ``LANE_LIMIT_S`` (VllmNcclVersions' 240 s for a ``docker exec`` that
imports torch, KernelXids' two steps, the upstream probes) keeps its own, in a lane without one:
a lane limit that fits it would let every other read of its lane hang for as long.

What comes back, in read order: ``<mark>:<i>``, read i's stdout, ``<mark>:rc:<its exit status>``; then
``<mark>:lane:<k>:<the lane's exit status>`` for each limited lane (124 or 137: killed at its limit,
then ``<mark>:clock:<the host's time>`` and ``<mark>:mtime:<i>:<its file's last write>``). A read
killed mid-line leaves no final newline, and the next mark is split off again by the parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pyinfra.api import QuoteString, StringCommand

from operations.facts.util import KILL_AFTER_S, LANE_LIMITED, RC, READ_LIMIT_S, TIMED_OUT, TIMEOUT_CODES

LANE_LIMIT_S = READ_LIMIT_S
# The prefetch's only write on the host: its scratch directory, removed when its command ends,
# also when the control side goes away (SIGHUP, SIGPIPE) or gives up on it (SIGTERM, SIGINT).
SCRATCH_CLEANUP = ("trap 'rm -rf \"$__gpufleet_reads\"' EXIT; trap 'exit 129' HUP; trap 'exit 130' INT; "
                   "trap 'exit 141' PIPE; trap 'exit 143' TERM;")
_LIMITS = re.compile(r"timeout -k \d+ (\d+) ")


def _text(command) -> str:
    # Only searched, never printed: a masked secret in it stays in this process.
    return command.get_raw_value() if hasattr(command, "get_raw_value") else str(command)


def keeps_its_own_limit(command) -> bool:
    """Whether a read runs under a time limit other than the lanes' (so in the lane without one).

    >>> keeps_its_own_limit(StringCommand("( timeout -k 5 240 sh -c 'docker exec r true' & t=$!; wait $t )"))
    True
    >>> keeps_its_own_limit(StringCommand("stat", "/etc/hostname"))
    False
    """
    return any(int(limit) != LANE_LIMIT_S for limit in _LIMITS.findall(_text(command)))


def as_in_a_lane(command) -> list[Any]:
    """The bits that run ``command`` (in a subshell of its own) as a lane runs it: without a time
    limit of its own, unless it keeps its own (:func:`keeps_its_own_limit`). For gpufleet.bench_reads.

    >>> StringCommand(*as_in_a_lane(StringCommand("uname", "-r"))).get_raw_value()
    '( __gpufleet_lane_limit=1; uname -r )'
    """
    return ["(", *([] if keeps_its_own_limit(command) else [f"{LANE_LIMITED}=1;"]), command, ")"]


def lane_members(commands: list, lanes: int) -> tuple[list[list[int]], list[int]]:
    """(the reads of each time-limited lane, round robin; the reads that keep their own limits).

    >>> lane_members([StringCommand("a"), StringCommand("b"), StringCommand("c")], 2)
    ([[0, 2], [1]], [])
    """
    own = [i for i, command in enumerate(commands) if keeps_its_own_limit(command)]
    shared = [i for i in range(len(commands)) if i not in own]
    return [shared[k::lanes] for k in range(min(lanes, len(shared)))], own


def concurrent_reads(commands: list, mark: str, lanes: int, lead: str | None = None) -> StringCommand:
    """One shell command that runs ``commands`` in ``lanes`` concurrent time-limited lanes (and one
    more for reads that keep their own limits) and prints what the module docstring says.

    ``lead``, if given, runs first, in a subshell: ``<mark>:lead``, its stdout and stderr, and
    ``<mark>:lead-rc:<its exit status>`` come first, and the reads run only when it exited 0.

    Each read runs in a subshell of its own (an ``exit`` in it ends only it), its stderr dropped as
    pyinfra's own read drops it, its stdin /dev/null. Each read writes its whole block (marks
    included) to a file of its own in a private scratch directory, and one ``cat`` prints them in
    order: a ``cat`` per read cost a GPU node's ~80 reads ~230 processes. Example::

        concurrent_reads([StringCommand("uname", "-r"), StringCommand("hostname")], "__m", 4)
        # prints: __m:0 / 6.1.0-27-amd64 / __m:rc:0 / __m:1 / gpu-node-1 / __m:rc:0 / __m:lane:0:0 / __m:lane:1:0
    """
    parts: list[Any] = []
    if lead is not None:
        # "$( (": a space, or the shell reads arithmetic. The lead's background processes (the
        # lock's watcher) write elsewhere, so the substitution ends when the lead does.
        # Its own line: the shell runs it before parsing the reads, so a read that does not parse
        # fails only the reads (read one by one after), never the lock.
        parts += ["__gpufleet_lead=$(", "(", lead, ")", "2>&1", "</dev/null", ");", "__gpufleet_lead_rc=$?;",
                  "printf", "'%s\\n'", f'"{mark}:lead"', '"$__gpufleet_lead"', f'"{mark}:lead-rc:$__gpufleet_lead_rc";',
                  '[ "$__gpufleet_lead_rc" -eq 0 ]', "||", "exit", "0\n"]
    if not commands:
        return StringCommand(*parts, "exit", "0")
    d = '"$__gpufleet_reads'  # the scratch directory (private: umask 077), by a name no read uses
    parts += ["__gpufleet_reads=$(umask", "077;", 'mktemp -d "${TMPDIR:-/tmp}/gpufleet-reads.XXXXXX")',
              "||", "exit", "1;", SCRATCH_CLEANUP]

    def blocks(members: list[int]) -> list[Any]:
        found: list[Any] = []
        for i in members:
            found += ["{", "echo", f'"{mark}:{i}";', "(", commands[i], ")", "2>/dev/null;",
                      "echo", f'"{mark}:rc:$?";', "}", f'>{d}/{i}";']
        return found

    limited, own = lane_members(commands, lanes)
    for k, members in enumerate(limited):
        # The lane's own shell: the scratch directory comes as its $1 (shifted away: a read sees no
        # arguments, as under its own `sh -c`). `timeout` signals the lane's process group; what is
        # left in it afterwards (a tool that ignored TERM, a straggler) is killed, as util.timed does.
        lane = StringCommand(f"{LANE_LIMITED}=1;", "__gpufleet_reads=$1;", "shift;", *blocks(members))
        # Killed at the limit: the time, and when each of its reads' files was last written (one
        # `date` and one `stat`, only then): a read answers as timed out only when it had been silent
        # for about the whole limit itself, not when the reads before it used the lane's time up.
        clock = ["case", "$rc", "in", "124|137)", "echo", f'"{mark}:clock:$(date +%s)";', "cd", f'{d}"', "&&",
                 "stat", "-c", f"'{mark}:mtime:%n:%Y'", "--", *(str(i) for i in members), "2>/dev/null;;", "esac;"]
        parts += ["{", "timeout", "-k", str(KILL_AFTER_S), str(LANE_LIMIT_S), "sh", "-c", QuoteString(lane), "sh",
                  f'{d}"', "</dev/null", ">/dev/null", "2>&1", "&", "t=$!;", "wait", "$t;", "rc=$?;",
                  "kill", "-KILL", "-$t", "2>/dev/null;", "{", "echo", f'"{mark}:lane:{k}:$rc";', *clock, "}",
                  f'>{d}/lane-{k}";', "}", "&"]
    if own:
        parts += ["{", *blocks(own), "}", "</dev/null", "&"]
    # The files in order (a glob would sort 10 before 2). A missing one (its lane killed) is only a
    # read without an answer, which pyinfra then reads itself: not a failed prefetch.
    parts += ["wait;", "cd", f'{d}"', "&&", "cat", *(str(i) for i in range(len(commands))),
              *(f"lane-{k}" for k in range(len(limited))), "2>/dev/null;", "exit", "0"]
    return StringCommand(*parts)


@dataclass
class LaneOutput:
    """What a :func:`concurrent_reads` command printed, read by read."""

    finished: dict[int, tuple[int, list[str]]] = field(default_factory=dict)  # i -> (exit status, stdout)
    cut_off: dict[int, list[str]] = field(default_factory=dict)  # started, never finished: what it printed
    lane_status: dict[int, int] = field(default_factory=dict)  # lane -> its `timeout`'s exit status
    clock: dict[int, int] = field(default_factory=dict)  # lane -> the host's time when it was killed (s)
    written: dict[int, int] = field(default_factory=dict)  # read -> when its file was last written (s)

    def answers(self, commands: list, lanes: int) -> dict[int, tuple[int, list[str]]]:
        """{read: (exit status, stdout)}: the finished reads, and the read a lane was running when it
        was killed at its limit, answered as timed out (what its own limit prints) when it is a
        gpufleet read with a limit (util.timed) that had printed nothing for ``LANE_LIMIT_S`` less
        the clocks' 1 s steps: it hung as long as its own limit would have let it. Any other read
        cut off has no answer: pyinfra reads it, under its own limit."""
        found = dict(self.finished)
        if not any(status in TIMEOUT_CODES for status in self.lane_status.values()):
            return found  # no lane was killed (every prefetch but a hung host's): nothing to sort out
        limited, _ = lane_members(commands, lanes)
        for k, members in enumerate(limited):
            status, killed_at = self.lane_status.get(k), self.clock.get(k)
            if status not in TIMEOUT_CODES or killed_at is None:
                continue
            for i in members:
                silent = killed_at - self.written.get(i, killed_at)
                if i in self.cut_off and LANE_LIMITED in _text(commands[i]) and silent >= LANE_LIMIT_S - 2:
                    found[i] = (0, [*self.cut_off[i], f"{TIMED_OUT}{LANE_LIMIT_S}", f"{RC}{status}"])
        return found


def _marks_on_their_own_lines(stdout: list[str], mark: str):
    """A read killed mid-line leaves its file without a final newline, and ``cat`` glues the next
    file's mark to that line: split it off again (the mark is random: no read prints it)."""
    for line in stdout:
        at = line.find(f"{mark}:", 1)
        while at > 0:
            yield line[:at]
            line = line[at:]
            at = line.find(f"{mark}:", 1)
        yield line


def read_output(stdout: list[str], mark: str) -> LaneOutput:
    """Split a :func:`concurrent_reads` command's stdout (the lead's part already taken off).

    >>> out = read_output(["m:0", "a", "m:rc:0", "m:1", "b", "m:lane:0:0", "m:lane:1:124"], "m")
    >>> out.finished, out.cut_off, out.lane_status
    ({0: (0, ['a'])}, {1: ['b']}, {0: 0, 1: 124})
    """
    output = LaneOutput()
    current, lines, lane = None, [], None
    for line in _marks_on_their_own_lines(stdout, mark):
        if line.startswith(f"{mark}:lane:"):
            if current is not None:
                output.cut_off[current] = lines
                current, lines = None, []
            number, _, status = line[len(f"{mark}:lane:"):].partition(":")
            lane = int(number) if number.isdigit() and status.isdigit() else None
            if lane is not None:
                output.lane_status[lane] = int(status)
            continue
        if line.startswith((f"{mark}:clock:", f"{mark}:mtime:")):
            kind, _, value = line[len(mark) + 1:].partition(":")
            if kind == "clock" and value.isdigit() and lane is not None:
                output.clock[lane] = int(value)
            elif kind == "mtime":
                read, _, seconds = value.partition(":")
                if read.isdigit() and seconds.isdigit():
                    output.written[int(read)] = int(seconds)
            continue
        if line.startswith(f"{mark}:rc:") and current is not None:
            output.finished[current] = (int(line.rsplit(":", 1)[1] or 1), lines)
            current, lines = None, []
        elif line.startswith(f"{mark}:") and line.rsplit(":", 1)[1].isdigit():
            if current is not None:
                output.cut_off[current] = lines  # its file ended before its status: the lane was killed
            current, lines = int(line.rsplit(":", 1)[1]), []
        elif current is not None:
            lines.append(line)
    if current is not None:
        output.cut_off[current] = lines
    return output
