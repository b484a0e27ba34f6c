"""The SSH connections gpufleet makes to real hosts (operations/ssh_no_delay.py, operations/port_forward.py)."""

from __future__ import annotations

import socket


def test_every_connection_to_a_lab_host_has_nagle_off(lab):
    from gpufleet.remote import connected

    with connected("inventory/lab.py") as (_, _, reachable, unreachable):
        assert unreachable == [] and reachable
        for host in reachable:
            sock = host.connector.client.get_transport().sock
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0, host.name


def test_a_forwarded_port_reaches_a_service_on_the_host(lab):
    # The host's own sshd, as the host sees it: the tunnel Milvus's users check and backups use.
    import gevent

    from gpufleet.remote import connected
    from operations.port_forward import forwarded

    with connected("inventory/lab.py", limit=("lb-1",)) as (_, _, reachable, _):
        with forwarded(reachable[0], "127.0.0.1", 22) as port:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
                with gevent.Timeout(10):
                    banner = client.recv(64)
    assert banner.startswith(b"SSH-2.0-"), banner
