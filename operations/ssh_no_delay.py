"""TCP_NODELAY on the SSH connections pyinfra opens: no delayed-ACK wait on every command.

paramiko opens its socket with the kernel's defaults, so Nagle's algorithm is on. SSH writes
small packets back to back (a command's channel open, then its exec request; the frames of a
gRPC call through a forwarded port), and Nagle holds each packet after the first until the host
has ACKed the first, which the host's delayed ACK sends up to 40 ms later (Linux). So every
command pyinfra ran waited ~45 ms for nothing. Measured on the lab (gpu-node-1, one connection,
15 runs of each, medians): ``true`` 48.7 ms -> 4.3 ms, a 20 KB output 48.4 -> 6.0 ms; connecting
95 -> 52 ms; the Milvus users check through a forwarded port 280 -> 90 ms. OpenSSH sets
TCP_NODELAY on its interactive sessions and on the connections a forwarded port accepts.

group_data/all.py hands :class:`NoDelayTransport` to paramiko's ``SSHClient.connect`` as its
``transport_factory``, through pyinfra's ``ssh_paramiko_connect_kwargs`` (both documented
hooks), so every connection gets it before its handshake: pyinfra's CLI, rollouts, drift, the
bench. A host or group whose data sets its own ``ssh_paramiko_connect_kwargs`` replaces that
dict: keep ``transport_factory`` in it. A ProxyJump target's socket is a paramiko channel, not a
TCP socket: nothing is set on it (the jump host's own connection is paramiko's default).

Example (group_data/all.py)::

    from operations.ssh_no_delay import NoDelayTransport
    ssh_paramiko_connect_kwargs = {"transport_factory": NoDelayTransport}
"""

from __future__ import annotations

import socket

import paramiko


def no_delay(sock) -> bool:
    """Turn Nagle's algorithm off on ``sock`` if it is a TCP socket; whether it did.

    Anything else (a Unix socket, a paramiko channel, a ProxyCommand) is left as it is.
    """
    if getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
        return False
    if getattr(sock, "type", None) != socket.SOCK_STREAM:
        return False
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return True


class NoDelayTransport(paramiko.Transport):
    """paramiko's Transport, over a socket with TCP_NODELAY (see the module)."""

    def __init__(self, sock, *args, **kwargs):
        no_delay(sock)
        super().__init__(sock, *args, **kwargs)
