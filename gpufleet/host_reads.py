"""Reads that cannot hang a check, and a name for every read that did not answer.

Two limits, because one is not enough:

* on the host, every fact's tool runs under coreutils ``timeout`` (operations/facts/util.py; in the
  prefetch, its lane's one: operations/read_lanes.py): a
  hung ``nvidia-smi`` is killed after 60 s and its fact fails (pyinfra marks the host failed; an
  unanswered read is never taken for an answer);
* on the control host, every command of a check gets pyinfra's ``_timeout`` (``READ_TIMEOUT_S``,
  longer than the host's limits): a tool stuck in the kernel (D state, as with a GPU fallen off the
  bus) ignores even SIGKILL, and so does the shell waiting for it. pyinfra then gives up on the
  command, logs "Command timed out after Ns" and marks the host failed.

Either way the host is reported **not checked**, naming the read ("timed out reading GPU health
(nvidia-smi): no answer within 60 s"), and the run goes on with the other hosts: exit 1, never a
hang. :class:`ReadFailures` keeps pyinfra's own error lines per host so that a read that failed
while deploy.py was being planned can be named too.
"""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

READ_TIMEOUT_S = 300  # control side, per command; above every limit on the host side

_PREFIX = re.compile(r"^\[(?P<host>[^\]\s]+)\]\s*(?:nested\s+)?(?P<text>.*)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# pyinfra's own limit ("Command timed out after 300s"), or the host's (util.raise_on_timeout)
_TIMED_OUT = re.compile(r"timed out after (\d+)s|no answer within (\d+) s")
_FACT = re.compile(r"could not (?:load|process) fact: (\S+)(.*)$")


class NotChecked(Exception):
    """A read that timed out or failed: the host (or this part of it) was not checked."""


class ReadFailures(logging.Handler):
    """pyinfra's error lines per host ("[gpu-node-2] Command timed out after 300s", "could not load fact: X")."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: dict[str, list[str]] = defaultdict(list)

    def emit(self, record: logging.LogRecord) -> None:
        match = _PREFIX.match(_ANSI.sub("", record.getMessage()).strip())
        if match:
            self.lines[match.group("host")].append(match.group("text").strip())

    def describe(self, host_name: str) -> str | None:
        """"timed out reading fact X (no answer within 300 s)", "could not read fact X", or None."""
        lines = self.lines.get(host_name) or []
        limit = next((m.group(1) or m.group(2) for m in map(_TIMED_OUT.search, lines) if m), None)
        fact = next((f"{m.group(1)}{m.group(2).rstrip()}" for m in map(_FACT.search, lines) if m), None)
        if limit:
            return f"timed out reading {f'fact {fact}' if fact else 'the host'} (no answer within {limit} s)"
        if fact:
            return f"could not read fact {fact}"
        return None


@contextmanager
def watching() -> Iterator[ReadFailures]:
    """Collect pyinfra's per-host error lines while the block runs."""
    handler = ReadFailures()
    pyinfra_logger = logging.getLogger("pyinfra")
    pyinfra_logger.addHandler(handler)
    try:
        yield handler
    finally:
        pyinfra_logger.removeHandler(handler)


def read(host, fact, what: str, failures: ReadFailures | None = None, **kwargs):
    """``host.get_fact(fact, **kwargs)``, or :class:`NotChecked` naming ``what`` when it did not answer.

    A fact killed by the host's own limit (it raises FactProcessError) and a command the control
    side gave up on both leave the host in pyinfra's failed hosts: both raise, named from pyinfra's
    error lines; so does a read after which pyinfra had no host left ("No hosts remaining!"). A fact
    that reports ``"status": "timeout"`` as data raises too.

    Example::

        health = read(host, GpuHealth, "GPU health (nvidia-smi)")
    """
    from pyinfra.api.exceptions import PyinfraError

    state = getattr(host, "state", None)
    failed_before = state is not None and host in state.failed_hosts
    started = time.monotonic()
    try:
        value = host.get_fact(fact, **kwargs)
    except PyinfraError as exc:
        raise NotChecked(_why(host, what, failures, time.monotonic() - started) or f"could not read {what}: {exc}") \
            from None
    if state is not None and not failed_before and host in state.failed_hosts:
        raise NotChecked(_why(host, what, failures, time.monotonic() - started) or f"could not read {what}")
    if isinstance(value, dict) and value.get("status") == "timeout":
        raise NotChecked(f"timed out reading {what}: {value.get('error')}")
    return value


def _why(host, what: str, failures: ReadFailures | None, elapsed: float) -> str | None:
    described = failures.describe(host.name) if failures else None
    if described and described.startswith("timed out"):
        return f"timed out reading {what} {described[described.rindex('(no answer'):]}"
    limit = (getattr(host, "data", None) and host.data.get("_timeout")) or None
    if limit and elapsed >= limit * 0.95:
        return f"timed out reading {what} (no answer within {limit} s)"
    return None
