"""Milvus's users on the fleet's Milvus host: root's password and the RAG app's user, from secret files.

Milvus keeps its users in its own metadata, reachable only through its API, and the Milvus image
has no client: so this operation asks Milvus from the control host, in a child process
(``python -m gpufleet.milvus_users``, which says what it checks and changes: the check over gRPC
without importing pymilvus, the changes with pymilvus), through a port
forwarded over the SSH connection pyinfra already holds to the Milvus host
(operations/port_forward.py; a host without an SSH connection, ``@local``, is reached directly).
The child reads the passwords from their control-side files; this operation's arguments, the
child's command line and everything printed name the files, never a value.

Idempotent by asking first: when root logs in with its secret, the app's user logs in with its
own, and the app's role has its grants, nothing is yielded (``host.noop``) and pyinfra reports no
change. Otherwise one function command makes it so, after the health gate (``milvus.ready``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import contextmanager

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, OperationError, operation

from operations.fact_prefetch import read_ahead, read_once
from operations.facts.net import HttpOk
from operations.milvus import bind_address
from operations.port_forward import forwarded

CHILD_TIMEOUT_S = 300


@contextmanager
def _reachable(target_host, address: str, port: int):
    """``http://127.0.0.1:<local port>`` forwarded to ``address:port`` over ``target_host``'s SSH session."""
    client = getattr(target_host.connector, "client", None)
    if client is None or client.get_transport() is None:
        yield f"http://{address}:{int(port)}"
        return
    with forwarded(target_host, address, port) as local_port:
        yield f"http://127.0.0.1:{local_port}"


class _Child:
    """``python -m gpufleet.milvus_users <action>``, started before its URI is known: Python and its
    Milvus client start (a quarter of a second for the check's gRPC stubs, a second for pymilvus)
    while the caller still reads the host's address and health and opens the tunnel; :meth:`answer`
    then hands it the URI on stdin."""

    def __init__(self, action: str, root_password_file: str, app_user: str | None, app_password_file: str | None,
                 collections: list[str]):
        command = [sys.executable, "-W", "ignore", "-m", "gpufleet.milvus_users", action, "--uri", "-",
                   "--root-password-file", root_password_file]
        if app_user:
            command += ["--app-user", app_user, "--app-password-file", app_password_file or ""]
            command += [arg for c in collections for arg in ("--collection", c)]
        self.action = action
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)

    def answer(self, uri: str) -> dict:
        out, err = self.process.communicate(f"{uri}\n", timeout=CHILD_TIMEOUT_S)
        if self.process.returncode != 0:  # its last line says what Milvus refused (pymilvus logs a lot before it)
            lines = err.strip().splitlines() or ["(no output)"]
            raise OperationError(f"Milvus users ({self.action}): {lines[-1]}")
        return json.loads(out.strip().splitlines()[-1])

    def stop(self) -> None:
        """Ends it if it still runs: no URI came (Milvus not healthy), a timeout, a cancelled read."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _apply(address, port, root_password_file, app_user, app_password_file, collections) -> None:
    """At execute time, on the host's greenlet (pyinfra's ``host`` is the Milvus host)."""
    child = _Child("apply", root_password_file, app_user, app_password_file, collections)
    try:
        with _reachable(host, address, port) as uri:
            made = child.answer(uri)
    finally:
        child.stop()
    for change in made["changes"]:
        logger.info(f"{host.print_prefix}milvus users: {change}")


@operation()
def users(address: str, port: int, root_password_file: str, app_user: str | None = None,
          app_password_file: str | None = None, collections: list[str] | None = None, health_port: int = 9091):
    """
    Make Milvus's root log in with its secret, and the app's user exist with its own and its grants.

    + address / port: where Milvus listens, as the Milvus host reaches it (its published address)
    + root_password_file: *control-side* file with root's password (``milvus_root_password_file``)
    + app_user: the RAG app's Milvus user (``milvus_app_user``); None: no app user
    + app_password_file: *control-side* file with its password (``milvus_app_password_file``)
    + collections: the app collections its role gets collection privileges on
    + health_port: Milvus's /healthz port: a Milvus that is not healthy yet (a fresh host's plan)
      is not asked, the change is planned outright

    Root with Milvus's default password is given the secret; root refusing both stops the deploy
    with that said (never a password). Nothing to do: no command, no change.

    **Example:**

    .. code:: python

        milvus_users.users(name="Milvus users", address="10.0.0.5", port=19530,
                           root_password_file="~/.config/gpufleet/milvus-root-password",
                           app_user="gpufleet_app", app_password_file="~/.config/gpufleet/milvus-app-password",
                           collections=["gpufleet_docs"])
    """
    key, check = _check(address, port, root_password_file, app_user, app_password_file, collections, health_port)
    # Asked once per run: at execution the plan's answer holds while nothing has run on the host.
    found = read_once(key, check)
    if not found.get("unreachable") and not found["changes"]:
        host.noop(f"milvus users as declared (root, {app_user or 'no app user'})")
        return
    yield FunctionCommand(_apply, (address, port, root_password_file, app_user, app_password_file,
                                   sorted(collections or [])), {})


def ask_ahead(address: str, port: int, root_password_file: str, app_user: str | None = None,
              app_password_file: str | None = None, collections: list[str] | None = None,
              health_port: int = 9091) -> None:
    """Start :func:`users`' check now, with its arguments, so that it runs beside the facts' round
    trip and while the rest of the Milvus host's plan is made: it is a child process on the
    control host (Python and the gRPC stubs starting: a quarter of a second), which the plan otherwise waits
    for when it reaches ``users``. Read-only, and it reads on its own greenlet (the host's address,
    Milvus's /healthz, then the child); its answer is the plan's (operations/fact_prefetch.py:
    ``read_ahead``). Example::

        every_host_first(settings, reads_ahead=lambda: milvus_users.ask_ahead(
            address="10.0.0.5", port=19530, root_password_file="~/.config/gpufleet/milvus-root-password"))
    """
    read_ahead(*_check(address, port, root_password_file, app_user, app_password_file, collections, health_port))


def _check(address, port, root_password_file, app_user, app_password_file, collections, health_port):
    """(read_once's key, the read) for Milvus's users as the arguments declare them."""
    collections = sorted(collections or [])

    def check() -> dict:
        # Started first: its start overlaps the two reads below (a no-op converge of the lab
        # waited for it at the end of its plan).
        child = _Child("check", root_password_file, app_user, app_password_file, collections)
        try:
            ip = bind_address(address)  # a fact read: on the reading greenlet, not the caller's
            health = f"http://{'127.0.0.1' if ip == '0.0.0.0' else ip}:{health_port}/healthz"
            if not host.get_fact(HttpOk, url=health):
                return {"unreachable": "not healthy"}
            with _reachable(host, address, port) as uri:
                return child.answer(uri)
        finally:
            child.stop()

    return f"milvus-users:{address}:{port}:{app_user}:{','.join(collections)}", check
