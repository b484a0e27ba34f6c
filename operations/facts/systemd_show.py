"""Units' states from ``systemctl show``: every unit a plan asks about, in one process.

``systemctl show --all --property Id --property P… -- UNIT…`` prints one block per unit asked, in
the order asked, blocks separated by an empty line. Each block is ``Key=value`` lines in systemd's
own order of properties (``Id`` first), whatever order they were asked in, and a unit that does not
exist still has its block (``ActiveState=inactive``, ``UnitFileState=``). So the block of a unit
asked with more properties holds, in the same order, exactly the lines a read asking fewer prints:
one ``systemctl`` answers every pyinfra ``SystemdStatus`` (SubState) and ``SystemdEnabled``
(UnitFileState) of a plan (operations/fact_batches.py), and one more every gpufleet ``ServiceState``
(operations/facts/edge.py). A ``systemctl`` start costs a lab node 6.7 ms of CPU; a GPU node's plan
asked twelve.

Only plain unit names are batched: a glob (``*``) would print several blocks for one name, and a
name that needs quoting is read by its own command. A batch whose output is not one block per unit,
each starting with ``Id=``, answers nothing, and each read is its own.

>>> show_command(["docker.service", "nvidia-persistenced.service"], ("Id", "SubState"))
'systemctl show --all --property Id --property SubState -- docker.service nvidia-persistenced.service'
>>> unit_blocks(["Id=a.service", "SubState=running", "", "Id=b.service", "SubState=dead"], 2)
[['Id=a.service', 'SubState=running'], ['Id=b.service', 'SubState=dead']]
>>> own_lines([["Id=a.service", "ActiveState=active", "SubState=running"]], {"Id", "SubState"})
['Id=a.service', 'SubState=running']
>>> cut_out(["Id=a.service", "SubState=running", "UnitFileState=enabled"], [["a.service"]], [{"Id", "UnitFileState"}])
[['Id=a.service', 'UnitFileState=enabled']]
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable

PLAIN_UNIT = re.compile(r"[A-Za-z0-9:_.@-]+")  # no glob characters, nothing to quote


def show_command(units: Iterable[str], properties: Iterable[str]) -> str:
    """``systemctl show --all`` of ``properties`` for ``units`` (each quoted for the shell)."""
    asked = " ".join(f"--property {p}" for p in properties)
    return f"systemctl show --all {asked} -- {' '.join(shlex.quote(u) for u in units)}"


def unit_blocks(lines: list[str], count: int) -> list[list[str]] | None:
    """``show``'s output as its blocks, one per unit asked in order; None unless there are exactly
    ``count``, each starting with ``Id=`` and made of ``Key=value`` lines."""
    blocks: list[list[str]] = [[]]
    for line in lines:
        if line == "":
            blocks.append([])
        else:
            blocks[-1].append(line)
    if len(blocks) != count:
        return None
    if any(not block or not block[0].startswith("Id=") or any("=" not in line for line in block)
           for block in blocks):
        return None
    return blocks


def own_lines(blocks: list[list[str]], keys: set[str]) -> list[str]:
    """What a read of these units' ``keys`` alone prints: each block's lines of those keys, blocks
    separated by an empty line, as ``systemctl show`` separates them."""
    lines: list[str] = []
    for i, block in enumerate(blocks):
        if i:
            lines.append("")
        lines += [line for line in block if line.partition("=")[0] in keys]
    return lines


def units_asked(asked: list[list[str]]) -> list[str]:
    """Every unit the reads ask (``asked[i]``: read i's units), each once, in order: what one show asks."""
    return list(dict.fromkeys(unit for units in asked for unit in units))


def cut_out(lines: list[str], asked: list[list[str]], keys: list[set[str]]) -> list[list[str]] | None:
    """Each read's own lines (read i asks the units ``asked[i]``, of properties ``keys[i]``) from the
    output of one show of :func:`units_asked`; None unless it printed one block per unit."""
    units = units_asked(asked)
    blocks = unit_blocks(lines, len(units))
    if blocks is None:
        return None
    block_of = dict(zip(units, blocks, strict=True))
    return [own_lines([block_of[unit] for unit in units], wanted) for units, wanted in zip(asked, keys, strict=True)]
