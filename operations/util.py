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


def sudo_arguments(host) -> dict[str, bool]:
    """``{"_sudo": True}`` when the host's data asks for sudo, else ``{}``.

    Operations get ``_sudo`` from host data through pyinfra; raw ``host.run_shell_command`` calls
    (callbacks after a reboot, readiness probes, the rollout's steps) do not, so they pass this.

    **Example:** ``host.run_shell_command(StringCommand("docker ps"), **sudo_arguments(host))``
    """
    return {"_sudo": True} if host.data.get("_sudo") else {}
