"""A local port that reaches a service on a host's private network through that host's SSH session.

Milvus is published on the Milvus host's private address only; the control host reaches it this
way for the Milvus users step (operations/milvus_users.py) and for ``gpufleet backup``/``restore``
and drift's row counts (gpufleet/data_backup.py, gpufleet/data_drift.py): the connection pyinfra
already holds to that host (its keys, known_hosts, ProxyJump) carries it as an SSH ``direct-tcpip``
channel, so no port is opened to the world and nothing else needs the private network. pyinfra runs
under gevent: the accept loop and the pumps are greenlets, and paramiko's blocking calls yield.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import gevent

from operations.ssh_no_delay import no_delay


def _pump(read, write) -> None:
    try:
        while True:
            data = read(65536)
            if not data:
                break
            write(data)
    except OSError:
        pass


@contextmanager
def forwarded(host, address: str, port: int) -> Iterator[int]:
    """Yield a port on 127.0.0.1 whose connections reach ``address:port`` as ``host`` sees it.

    ``host`` is a pyinfra host connected over SSH (paramiko). Only this process's children
    use the port: it listens on loopback, for as long as the ``with`` block runs.
    """
    transport = host.connector.client.get_transport()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    pumps: list = []

    def serve_one(client: socket.socket) -> None:
        try:
            channel = transport.open_channel("direct-tcpip", (address, int(port)), ("127.0.0.1", 0), timeout=30)
        except Exception:  # noqa: BLE001 - the service is down: the client sees the refusal
            client.close()
            return
        both = [gevent.spawn(_pump, client.recv, channel.sendall), gevent.spawn(_pump, channel.recv, client.sendall)]
        gevent.joinall(both, count=1)
        channel.close()
        client.close()
        gevent.killall(both)

    def accept() -> None:
        while True:
            client, _ = listener.accept()
            no_delay(client)  # as OpenSSH does for a forwarded port: a gRPC call's frames go out at once
            pumps.append(gevent.spawn(serve_one, client))

    acceptor = gevent.spawn(accept)
    try:
        yield listener.getsockname()[1]
    finally:
        acceptor.kill()
        gevent.killall(pumps)
        listener.close()
