"""Many reads of one kind answered by one process, inside the prefetch's one command.

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

pyinfra's ``SystemdStatus`` and ``SystemdEnabled`` of every unit come from one ``systemctl show``
(operations/facts/systemd_show.py): 4 of the 12 ``systemctl`` processes a GPU node's plan started.

gpufleet's own facts join in with a ``batch_reader`` of their class's own (not inherited: a
subclass may read otherwise): an object with three methods. ``PackageStates`` answers every package
list of a plan from one ``dpkg-query`` (operations/facts/apt.py); ``ContainerState`` and
``ImageState`` every container or image from one ``curl`` (operations/facts/docker_api.py);
``ServiceState`` every unit from one ``systemctl show`` (operations/facts/edge.py)::

    batch_accepts(fact_kwargs) -> bool           # may this read be answered from a batch?
    batch_command(kwargs_list) -> str | StringCommand    # one command for all of them
    batch_outputs(lines, kwargs_list, exit_code) -> list[list[str]] | None
        # each read's own stdout, or None: the batch did not work, and each is read alone.
        # A batch killed at its time limit answers each read as timed out (what each alone would
        # print after as long a wait), and the prefetch reads none of them again.
    batch_member(fact_class, fact_kwargs) -> dict    # optional: a reader of several classes
        # (SystemdStatus and SystemdEnabled) notes in each member's arguments what its class reads

For pyinfra's file facts, only paths that are absolute and of plain characters (letters, digits,
``_ . / @ : + -``) are batched: they print unquoted and unescaped by both tools, so the path at the
start of a line is the path asked. Any other path is read by its own command, as before. The first
path of each batch (``/``, ``/dev/null``) always answers: a host whose ``stat`` or ``sha1sum`` does not (another
``stat``, no ``sha1sum``: pyinfra's command would try ``shasum``) answers nothing from the batch,
and those reads are pyinfra's own; so does a tool that exited other than 0 or 1 (killed part-way),
or printed a line that is not one per path asked. tests/unit/test_fact_batches.py compares every
answer with pyinfra's own read.

Example (operations/fact_prefetch.py)::

    batches = Batches()
    if not batches.add(key, File, {"path": "/etc/docker/daemon.json"}):
        ...  # not batchable: read with its own command
    for batch in batches:
        run(batch.command())  # then batch.answers(its stdout lines): {key: that read's stdout lines}
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyinfra.api import StringCommand
from pyinfra.facts.files import LINUX_STAT_COMMAND, Directory, File, Link, Sha1File, Sha256File
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

from operations.facts.systemd_show import PLAIN_UNIT, cut_out, show_command, units_asked
from operations.facts.util import timed_out_lines

# What pyinfra's File command prints for a path: its stat format, read out of its own command.
_STAT_FORMAT = re.fullmatch(r"stat -c '([^']*)'", LINUX_STAT_COMMAND).group(1)
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9_./@:+-]*")


def _stat_line(line: str) -> tuple[str, str]:
    """A batch stat line: (its path, the line as pyinfra's own command prints it)."""
    path, _, rest = line.partition(" ")  # "<path> <pyinfra's line>": a plain path has no space
    return path, rest


def _hash_line(line: str) -> tuple[str, str]:
    """A batch sha*sum line, already as pyinfra's own command prints it: "<hash>  <path>"."""
    return line.partition("  ")[2], line


@dataclass(frozen=True)
class PathTool:
    """One tool that answers pyinfra's reads of many paths in one process."""

    name: str
    template: str  # the tool's invocation before the paths
    always_there: str  # a path the tool always answers for: its line says the tool works
    parse: Callable[[str], tuple[str, str]]  # a line -> (its path, pyinfra's own line)

    def batch_accepts(self, fact_kwargs: dict[str, Any]) -> bool:
        path = fact_kwargs.get("path")
        return set(fact_kwargs) == {"path"} and isinstance(path, str) and bool(_PLAIN_PATH.fullmatch(path))

    def batch_command(self, kwargs_list: list[dict[str, Any]]) -> StringCommand:
        paths = list(dict.fromkeys(kwargs["path"] for kwargs in kwargs_list))  # asked by File and Directory: once
        return StringCommand(self.template, self.always_there, *paths)

    def batch_outputs(self, lines: list[str], kwargs_list: list[dict[str, Any]],
                      exit_code: int = 0) -> list[list[str]] | None:
        """Each read's stdout as pyinfra's own command prints it; None when the tool did not work.

        Both tools exit 1 when any path has no answer (a missing file; why is on stderr, dropped as
        pyinfra drops it), and go on with the next path. Anything else (killed part-way: the paths
        after that would read as missing) answers nothing, and so does output that is not one line
        per path asked, each path once.
        """
        if exit_code not in (0, 1):
            return None
        asked = {kwargs["path"] for kwargs in kwargs_list} | {self.always_there}
        found: dict[str, str] = {}
        for line in lines:
            path, own = self.parse(line)
            if path not in asked or path in found:
                return None
            found[path] = own
        if self.always_there not in found:
            return None
        return [[found[kwargs["path"]]] if kwargs["path"] in found else [] for kwargs in kwargs_list]


class SystemdUnits:
    """pyinfra's ``SystemdStatus`` and ``SystemdEnabled`` of plain unit names (the system manager,
    not ``--user`` or another machine's), every unit of a plan in one ``systemctl show``
    (operations/facts/systemd_show.py says why each read's lines are its own). Like pyinfra's own
    reads, the batch has no time limit of its own. ``systemctl`` missing, failing or printing other
    than one block per unit: each read is pyinfra's own."""

    STATE_KEY = "__state_key"  # which of the batch's properties a member reads (its class's state_key)

    @classmethod
    def batch_member(cls, fact_class: type, fact_kwargs: dict[str, Any]) -> dict[str, Any]:
        return {**fact_kwargs, cls.STATE_KEY: fact_class.state_key}

    @staticmethod
    def _units(fact_kwargs: dict[str, Any]) -> list[str]:
        services = fact_kwargs.get("services")
        return [services] if isinstance(services, str) else list(services or [])

    def batch_accepts(self, fact_kwargs: dict[str, Any]) -> bool:
        services = fact_kwargs.get("services")
        return (set(fact_kwargs) == {"user_mode", "machine", "user_name", "services"}
                and fact_kwargs["user_mode"] is False and fact_kwargs["machine"] is None
                and fact_kwargs["user_name"] is None and isinstance(services, (str, list)) and bool(services)
                and all(isinstance(u, str) and PLAIN_UNIT.fullmatch(u) for u in self._units(fact_kwargs)))

    def batch_command(self, kwargs_list: list[dict[str, Any]]) -> str:
        keys = dict.fromkeys(kwargs[self.STATE_KEY] for kwargs in kwargs_list)
        return show_command(units_asked([self._units(kwargs) for kwargs in kwargs_list]), ("Id", *keys))

    def batch_outputs(self, lines: list[str], kwargs_list: list[dict[str, Any]],
                      exit_code: int = 0) -> list[list[str]] | None:
        if exit_code != 0:
            return None
        return cut_out(lines, [self._units(kwargs) for kwargs in kwargs_list],
                       [{"Id", kwargs[self.STATE_KEY]} for kwargs in kwargs_list])


_SYSTEMD = SystemdUnits()
_STAT = PathTool("stat", f"stat -c '%n {_STAT_FORMAT}' --", "/", _stat_line)
# pyinfra's fact classes (exactly these: a subclass may read otherwise) -> the tool that answers them.
_PYINFRA_READERS = {File: _STAT, Directory: _STAT, Link: _STAT,
                    Sha1File: PathTool("sha1sum", "sha1sum --", "/dev/null", _hash_line),
                    Sha256File: PathTool("sha256sum", "sha256sum --", "/dev/null", _hash_line),
                    SystemdStatus: _SYSTEMD, SystemdEnabled: _SYSTEMD}


def reader_of(cls: type):
    """What answers a batch of ``cls`` reads (a PathTool, the class's own batch_reader), or None."""
    if cls in _PYINFRA_READERS:
        return _PYINFRA_READERS[cls]
    return vars(cls).get("batch_reader") if isinstance(cls, type) else None


@dataclass
class Batch:
    """Reads one reader answers together: {key: fact arguments}, in the order they were added."""

    reader: Any
    members: dict[str, dict[str, Any]] = field(default_factory=dict)

    def command(self):
        return self.reader.batch_command(list(self.members.values()))

    def answers(self, lines: list[str], exit_code: int = 0) -> dict[str, list[str]]:
        """{key: the stdout its own command prints}; {} when the batch did not work.

        A batch killed at its time limit (operations/facts/util.py: wrap) answers each read as timed
        out: each alone would have waited as long for the same hung tool, and the prefetch reads a
        timed-out read no second time. Only then are the reader's own rules skipped.
        """
        timed_out = timed_out_lines(lines)
        if timed_out is not None:
            return {key: list(timed_out) for key in self.members}
        outputs = self.reader.batch_outputs(lines, list(self.members.values()), exit_code)
        if outputs is None or len(outputs) != len(self.members):
            return {}
        return dict(zip(self.members, outputs, strict=True))


class Batches:
    """The batches of one prefetch (of one set of privileges), by reader."""

    def __init__(self):
        self._batches: dict[int, Batch] = {}

    def add(self, key: str, cls: type, fact_kwargs: dict[str, Any]) -> bool:
        """Put the read in its batch; False for a read no batch answers (its own command reads it)."""
        reader = reader_of(cls)
        if reader is None or not reader.batch_accepts(fact_kwargs):
            return False
        # A reader that answers several classes at once notes each member's class in its arguments.
        member = reader.batch_member(cls, fact_kwargs) if hasattr(reader, "batch_member") else dict(fact_kwargs)
        self._batches.setdefault(id(reader), Batch(reader)).members[key] = member
        return True

    def __iter__(self):
        return iter(self._batches.values())

    def __len__(self) -> int:
        return len(self._batches)
