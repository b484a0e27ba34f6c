"""Plain-text tables for terminal output (no colours, so logs and pipes stay readable)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def render_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces, header first.

    >>> print(render_table(["A", "B"], [[1, "x"]]))
    A  B
    1  x
    """
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)
