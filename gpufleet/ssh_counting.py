"""The shell commands pyinfra sends over SSH, recorded at its connector: counted per host (the
benches' "commands per host") or timed (`gpufleet.bench --timeline`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def counting() -> Iterator[Counter]:
    """``{host name: commands}`` for every SSH shell command pyinfra runs inside the block, filled
    when the block ends (:func:`recording`'s commands, counted).

    >>> with counting() as counts:
    ...     pass
    >>> dict(counts)
    {}
    """
    counts: Counter = Counter()
    try:
        with recording() as commands:
            yield counts
    finally:
        counts.update(host for host, *_ in commands)


@contextmanager
def recording() -> Iterator[list[tuple[str, float, float, str]]]:
    """``[(host name, start s, end s, command's first words)]`` for every SSH shell command pyinfra
    runs inside the block, times from the block's start (`gpufleet.bench --timeline`: where a
    run's wall time goes, host by host).

    >>> with recording() as commands:
    ...     pass
    >>> commands
    []
    """
    import time

    from pyinfra.connectors.ssh import SSHConnector

    commands: list[tuple[str, float, float, str]] = []
    original = SSHConnector.run_shell_command
    started = time.perf_counter()

    def recorded(self, command, *args, **kwargs):
        begun = time.perf_counter() - started
        try:
            return original(self, command, *args, **kwargs)
        finally:
            # Masked, as drift prints commands: a secret passed as a MaskString stays hidden.
            text = command.get_masked_value() if hasattr(command, "get_masked_value") else str(command)
            commands.append((self.host.name, begun, time.perf_counter() - started, " ".join(text.split())[:70]))

    SSHConnector.run_shell_command = recorded
    try:
        yield commands
    finally:
        SSHConnector.run_shell_command = original


def timeline_lines(commands: list[tuple[str, float, float, str]]) -> list[str]:
    """One line per command, in order of start: host, start, end, seconds, its first words.

    >>> timeline_lines([("lb-1", 0.25, 0.5, "echo b"), ("gpu-node-1", 0.1, 0.35, "echo a")])
    ['gpu-node-1    0.10   0.35   0.25  echo a', 'lb-1          0.25   0.50   0.25  echo b']
    """
    return [f"{host:12} {start:5.2f}  {end:5.2f}  {end - start:5.2f}  {text}"
            for host, start, end, text in sorted(commands, key=lambda c: c[1])]
