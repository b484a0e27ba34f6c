"""TCP_NODELAY on the SSH connections pyinfra opens: no delayed-ACK wait on every command.

paramiko opens its socket with the kernel's defaults, so Nagle's algorithm is on: a small packet
is held while an earlier one is not yet ACKed. SSH sends small packets the host does not answer
at once (a finished command's channel EOF and close, then the next command's channel open; the
handshake's banner and key exchange init; a gRPC call's frames through a forwarded port), and the
host's delayed ACK comes about 40 ms later (Linux's shortest delayed-ACK timer; up to 200 ms). So
every command pyinfra ran waited ~45 ms for nothing (README Speed, "Stop 28", has the measurements:
a command's round trip, connecting, the Milvus users check, a converge, a rollout). OpenSSH's
``ssh`` and ``sshd`` set TCP_NODELAY on every session's connection, and on the connections a
forwarded port accepts. Uploads: paramiko writes each SSH packet in one send, so at most one
small segment per 32 KiB goes out early (negligible).

group_data/all.py hands :func:`no_delay_transport` to paramiko's ``SSHClient.connect`` as its
``transport_factory``, through pyinfra's ``ssh_paramiko_connect_kwargs`` (both documented
hooks), so every connection gets it before its handshake: pyinfra's CLI, rollouts, drift, the
bench. Through a ProxyJump the host's connection is a channel of the jump host's, and the jump
host's TCP socket, which carries it, is the one set, before the host's handshake; the jump host's
own handshake still runs with Nagle on (pyinfra connects hops without the host's connect keywords).
A host or group whose data sets its own ``ssh_paramiko_connect_kwargs`` replaces that dict: keep
``transport_factory`` in it (every run of deploy.py and ``gpufleet validate`` warn when a host
lacks it: gpufleet/settings.py).

Example (group_data/all.py)::

    from operations.ssh_no_delay import no_delay_transport
    ssh_paramiko_connect_kwargs = {"transport_factory": no_delay_transport}
"""

from __future__ import annotations

import socket

import paramiko


def no_delay(sock) -> bool:
    """Turn Nagle's algorithm off on the TCP socket that carries ``sock``; whether it did.

    A paramiko channel (a ProxyJump hop) is followed to its transport's socket; anything else that
    is not a TCP socket (a Unix socket, a ProxyCommand) is left as it is. Best effort, as
    OpenSSH's: a socket the kernel refuses it for (its peer already gone) stays as it was.
    """
    while isinstance(sock, paramiko.Channel):
        sock = sock.get_transport().sock
    if getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
        return False
    if getattr(sock, "type", None) != socket.SOCK_STREAM:
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        return False
    return True


def no_delay_transport(sock, *args, **kwargs) -> paramiko.Transport:
    """paramiko's Transport over ``sock``, Nagle off first: a ``transport_factory`` for
    ``SSHClient.connect``, which starts the handshake after this returns.

    A function, not a Transport subclass: pyinfra prints host data (``debug-inventory``) and
    encodes functions, not classes.
    """
    no_delay(sock)
    return paramiko.Transport(sock, *args, **kwargs)
