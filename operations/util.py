"""Helpers shared by several operation modules."""

from __future__ import annotations

from io import StringIO


def put_text(dest: str, text: str, mode: str = "644"):
    """Yield the commands that make root-owned `dest` hold `text` (nothing when it already does).

    Operations call it with ``yield from put_text(...)``; it is pyinfra's ``files.put`` on an
    in-memory source, so the content is compared by hash on the host.
    """
    from pyinfra.operations import files

    yield from files.put._inner(src=StringIO(text), dest=dest, user="root", group="root", mode=mode)
