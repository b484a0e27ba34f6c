"""operations/ssh_no_delay.py: the socket option pyinfra's SSH connections get before their handshake."""

from __future__ import annotations

import socket

from operations.ssh_no_delay import NoDelayTransport, no_delay


def _tcp_pair():
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    return client, server


def _nagle_off(sock) -> bool:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_a_transport_turns_nagle_off_on_its_tcp_socket_before_any_handshake():
    client, server = _tcp_pair()
    try:
        assert not _nagle_off(client)  # the kernel's default, which paramiko keeps
        transport = NoDelayTransport(client)
        assert _nagle_off(client)
        assert not transport.is_active()  # nothing was sent: the handshake is the caller's (SSHClient.connect)
        assert not _nagle_off(server)  # the other end is the host's business
    finally:
        client.close()
        server.close()


def test_anything_but_a_tcp_socket_is_left_as_it_is():
    left, right = socket.socketpair()  # a Unix socket: no Nagle to turn off, and setting it would raise
    try:
        assert no_delay(left) is False
        NoDelayTransport(left)  # a ProxyCommand or a jump host's channel goes through here too
    finally:
        left.close()
        right.close()

    class Channel:  # a paramiko channel (ProxyJump) has no family
        def send(self, data):
            return len(data)

    assert no_delay(Channel()) is False


def test_the_repository_data_gives_every_host_the_transport():
    # pyinfra hands ssh_paramiko_connect_kwargs to paramiko's SSHClient.connect: both inventories'
    # hosts, every group, must carry the factory (a group's own dict would replace it).
    from gpufleet.fleet import load_inventory

    for path in ("inventory/prod.py", "inventory/lab.py"):
        inventory = load_inventory(path)
        for host in inventory:
            assert host.data.ssh_paramiko_connect_kwargs == {"transport_factory": NoDelayTransport}, (path, host.name)
