"""Count the shell commands pyinfra sends over SSH, per host, at its connector (the benches' "commands per host")."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def counting() -> Iterator[Counter]:
    """``{host name: commands}`` for every SSH shell command pyinfra runs inside the block.

    >>> with counting() as counts:
    ...     pass
    >>> dict(counts)
    {}
    """
    from pyinfra.connectors.ssh import SSHConnector

    counts: Counter = Counter()
    original = SSHConnector.run_shell_command

    def counted(self, command, *args, **kwargs):
        counts[self.host.name] += 1
        return original(self, command, *args, **kwargs)

    SSHConnector.run_shell_command = counted
    try:
        yield counts
    finally:
        SSHConnector.run_shell_command = original
