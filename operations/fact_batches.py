"""Many of pyinfra's file facts answered by one process each, inside the prefetch's one command.

A GPU node's plan reads about fifty of pyinfra's file facts (``File``, ``Directory``, ``Link`` and
``Sha1File``/``Sha256File``: every ``files.put``, ``files.template`` and ``files.directory``). Each
is its own little shell (a subshell, ``test``, a ``stat`` or ``sha1sum`` process): about a third of
the host's CPU for a no-op converge (`make bench-reads`). One ``stat`` prints every path's line and
one ``sha1sum`` every file's hash; each read's answer is then cut out of it:

* ``File``/``Directory``/``Link``: pyinfra's command prints ``stat -c FORMAT path`` when the path
  exists (or is a dangling link) and nothing otherwise. ``stat -c '%n FORMAT' -- / path...`` prints
  the same line after the path and a space for each path that exists, in order; a path without a
  line reads as nothing.
* ``Sha1File``/``Sha256File``: pyinfra's prints ``sha1sum path`` (``<hash>  <path>``) for a file it
  can hash and nothing otherwise (missing, a directory). ``sha1sum -- /dev/null path...`` prints
  the same line for each file it can hash.

Only paths that are absolute and of plain characters (letters, digits, ``_ . / @ : + -``) are
batched: they print unquoted and unescaped by both tools, so the path at the start of a line is
the path asked. Any other path is read by its own command, as before. The first path of each batch
(``/``, ``/dev/null``) always answers: a host whose ``stat`` or ``sha1sum`` does not (another
``stat``, no ``sha1sum``: pyinfra's command would try ``shasum``) answers nothing from the batch,
and those reads are pyinfra's own. tests/unit/test_fact_batches.py compares every answer with
pyinfra's own read.

Example (operations/fact_prefetch.py)::

    batches = Batches()
    if not batches.add(key, File, {"path": "/etc/docker/daemon.json"}):
        ...  # not batchable: read with its own command
    for batch in batches:
        run(batch.command())  # then batch.answers(exit_code, stdout_lines): {key: stdout_lines}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pyinfra.api import StringCommand
from pyinfra.facts.files import LINUX_STAT_COMMAND, Directory, File, Link, Sha1File, Sha256File

# What pyinfra's File command prints for a path: its stat format, read out of its own command.
_STAT_FORMAT = re.fullmatch(r"stat -c '([^']*)'", LINUX_STAT_COMMAND).group(1)
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9_./@:+-]*")


@dataclass(frozen=True)
class _Tool:
    program: str
    always_there: str  # a path the tool always answers for: its line says the tool works
    template: str  # the tool's invocation before the paths


_TOOLS = {
    "stat": _Tool("stat", "/", f"stat -c '%n {_STAT_FORMAT}' --"),
    "sha1sum": _Tool("sha1sum", "/dev/null", "sha1sum --"),
    "sha256sum": _Tool("sha256sum", "/dev/null", "sha256sum --"),
}
# pyinfra's fact classes (exactly these: a subclass may read otherwise) -> the tool that answers them.
_BATCHED = {File: "stat", Directory: "stat", Link: "stat", Sha1File: "sha1sum", Sha256File: "sha256sum"}


def _line_path(tool: str, line: str) -> tuple[str, str]:
    """(the path a line is about, the line as pyinfra's own command prints it)."""
    if tool == "stat":  # "<path> <pyinfra's line>"
        path, _, rest = line.partition(" ")
        return path, rest
    _, _, path = line.partition("  ")  # "<hash>  <path>", as pyinfra's own
    return path, line


@dataclass
class Batch:
    """The reads one tool answers: {key: path}, in the order they were added."""

    tool: str
    members: dict[str, str] = field(default_factory=dict)

    def command(self) -> StringCommand:
        tool = _TOOLS[self.tool]
        paths = list(dict.fromkeys(self.members.values()))  # a path asked by File and Directory: once
        return StringCommand(tool.template, tool.always_there, *paths)

    def answers(self, exit_code: int, lines: list[str]) -> dict[str, list[str]]:
        """{key: the stdout pyinfra's own command prints for it}; {} when the tool did not work.

        The exit code is not read: both tools exit 1 when any path has no answer (a missing file),
        and their stderr (why) is dropped, as pyinfra drops it.
        """
        found = dict(_line_path(self.tool, line) for line in lines)
        if _TOOLS[self.tool].always_there not in found:
            return {}
        return {key: [found[path]] if path in found else [] for key, path in self.members.items()}


class Batches:
    """The batches of one prefetch, by tool and by the privileges the reads ask for."""

    def __init__(self):
        self._batches: dict[tuple[str, str], Batch] = {}

    def add(self, key: str, cls: type, fact_kwargs: dict[str, Any], privileges: str = "") -> bool:
        """Put the read in its batch; False for a read no batch answers (its own command reads it)."""
        tool = _BATCHED.get(cls)
        path = fact_kwargs.get("path")
        if tool is None or set(fact_kwargs) != {"path"} or not isinstance(path, str) or not _PLAIN_PATH.fullmatch(path):
            return False
        self._batches.setdefault((tool, privileges), Batch(tool)).members[key] = path
        return True

    def __iter__(self):
        return iter(self._batches.values())

    def items(self):
        """((tool, privileges), batch) pairs."""
        return self._batches.items()
