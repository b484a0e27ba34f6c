"""Connect to an inventory's hosts through pyinfra's API and run read-only work on each in parallel.

Used by the checking commands (verify, drift): they read facts and run commands that change
nothing, so they never go through a deploy. Unreachable hosts are reported, not fatal.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import gevent
from pyinfra.api import Config, State
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.exceptions import PyinfraError
from pyinfra.context import ctx_host, ctx_state

from gpufleet.fleet import Fleet, fleet_from_inventory, load_inventory


def select(inventory, limit: tuple[str, ...] | list[str]) -> list:
    """Hosts matching any --limit pattern (host name, group name or glob), as pyinfra's --limit.

    A pattern that matches no host is an error (SettingsError naming the hosts that exist): a
    check of nothing must not pass as a clean check.
    """
    if not limit:
        return list(inventory)
    chosen = []
    for host in inventory:
        if any(fnmatch.fnmatch(host.name, p) or p in host.groups for p in limit):
            chosen.append(host)
    unmatched = [p for p in limit if not any(fnmatch.fnmatch(h.name, p) or p in h.groups for h in inventory)]
    if unmatched:
        from gpufleet.settings import SettingsError, SettingsIssue

        names = ", ".join(h.name for h in inventory)
        raise SettingsError([SettingsIssue("(command line)", "--limit", p, f"a host, group or glob of the inventory "
                                           f"(hosts: {names})") for p in unmatched])
    return chosen


def close_connections(state: State) -> None:
    """pyinfra's ``disconnect_all``, and then really close every SSH connection.

    pyinfra 3.10's SSH connector ``disconnect()`` only clears its file-transfer cache: the paramiko
    client stays open until the process exits. A long-lived gpufleet process (a rollout, ``drift
    --fix``, the bench) would pile up connections, and hold each host's deploy lock
    (operations/deploy_lock.py), which lives as long as the connection that took it.
    """
    disconnect_all(state)
    for host in state.inventory:
        client = getattr(getattr(host, "connector", None), "client", None)
        if client is not None:
            client.close()


@contextmanager
def connected(inventory_path: str, limit=(), overrides: dict[str, Any] | None = None,
              connect_timeout: int = 10, read_timeout: int | None = None) -> Iterator[tuple[State, Fleet, list, list]]:
    """Yield (state, fleet, reachable hosts, unreachable hosts); disconnect afterwards.

    Every fact read through this state gives up after ``read_timeout`` seconds (default
    gpufleet.host_reads.READ_TIMEOUT_S; pyinfra then marks the host failed): a hung tool on one
    host cannot hang a check of the fleet. Commands run with :func:`shell` carry their own limit.
    """
    from gpufleet.host_reads import READ_TIMEOUT_S

    overrides = {"_timeout": read_timeout or READ_TIMEOUT_S, **(overrides or {})}
    inventory = load_inventory(inventory_path, overrides)
    fleet = fleet_from_inventory(inventory)  # invalid data stops here, before any connection
    hosts = select(inventory, limit)
    state = State(check_for_changes=False)
    state.init(inventory, Config(CONNECT_TIMEOUT=connect_timeout, FAIL_PERCENT=None), initial_limit=hosts)
    try:
        connect_all(state)
    except PyinfraError:
        pass  # "No hosts remaining!": every host is unreachable, which the caller reports
    reachable = [h for h in hosts if h.connected]
    unreachable = [h for h in hosts if not h.connected]
    try:
        yield state, fleet, reachable, unreachable
    finally:
        close_connections(state)


def run_parallel(state: State, hosts: list, work: Callable[[Any], Any]) -> dict[str, Any]:
    """``{host name: work(host)}``, one greenlet per host; an exception becomes the value."""

    def one(host):
        with ctx_state.use(state), ctx_host.use(host):
            try:
                return work(host)
            except Exception as exc:  # noqa: BLE001 - reported per host, never fatal for the others
                return exc

    greenlets = {host.name: gevent.spawn(one, host) for host in hosts}
    gevent.joinall(list(greenlets.values()))
    return {name: g.value for name, g in greenlets.items()}


def shell(host, command: str, timeout: int = 300, **arguments) -> tuple[bool, str]:
    """Run one read-only command; return (exit status 0, stdout+stderr text).

    ``arguments`` are pyinfra's connector arguments (``_sudo=True``...). A command that runs past
    ``timeout`` seconds raises TimeoutError.
    """
    from pyinfra.api import StringCommand

    ok, output = host.run_shell_command(StringCommand(command), _timeout=timeout, **arguments)
    text = "\n".join(line.line for line in output.combined_lines)
    return ok, text
