"""operations/port_forward.py: a local port whose connections go through a host's SSH transport."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import gevent

from operations import port_forward


class _Transport:
    """A paramiko transport's ``open_channel``: the channel is one end of a socket pair, the
    service the other."""

    def __init__(self):
        self.opened = []
        self.service = None

    def open_channel(self, kind, destination, origin, timeout=None):
        self.opened.append((kind, destination))
        channel, self.service = socket.socketpair()
        return channel


def _host(transport):
    return SimpleNamespace(connector=SimpleNamespace(client=SimpleNamespace(get_transport=lambda: transport)))


def test_a_connection_reaches_the_service_both_ways_with_nagle_off_on_the_accepted_socket(monkeypatch):
    transport, accepted = _Transport(), []

    def spied(sock):
        accepted.append((sock, port_forward_no_delay(sock)))
        return accepted[-1][1]

    port_forward_no_delay = port_forward.no_delay
    monkeypatch.setattr(port_forward, "no_delay", spied)
    try:
        with port_forward.forwarded(_host(transport), "10.0.0.5", 19530) as port:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as client, gevent.Timeout(5):
                client.sendall(b"ping")
                while transport.service is None:
                    gevent.sleep(0.01)
                assert transport.service.recv(4) == b"ping"
                transport.service.sendall(b"pong")
                assert client.recv(4) == b"pong"
                [(sock, done)] = accepted
                assert sock.getpeername() == client.getsockname()  # the socket set is this connection's
                assert done is True and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert transport.opened == [("direct-tcpip", ("10.0.0.5", 19530))]
    finally:
        if transport.service is not None:
            transport.service.close()
