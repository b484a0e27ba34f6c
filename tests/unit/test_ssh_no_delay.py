"""operations/ssh_no_delay.py: the socket option pyinfra's SSH connections get, and how it reaches them."""

from __future__ import annotations

import socket
import subprocess
import sys

import paramiko
import pytest

from gpufleet import PROJECT_ROOT
from operations.ssh_no_delay import no_delay, no_delay_transport

INVENTORIES = ("inventory/prod.py", "inventory/staging.py", "inventory/lab.py")


@pytest.fixture
def tcp_pair():
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    yield client, server
    client.close()
    server.close()


def _nagle_off(sock) -> bool:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_the_factory_turns_nagle_off_on_the_socket_it_is_given(tcp_pair):
    client, _ = tcp_pair
    assert not _nagle_off(client)  # the kernel's default, which paramiko keeps
    transport = no_delay_transport(client)
    assert isinstance(transport, paramiko.Transport) and transport.sock is client
    assert _nagle_off(client)


def _channel_over(sock):
    channel = paramiko.Channel(0)
    channel._set_transport(paramiko.Transport(sock))  # as Transport.open_channel does
    return channel


def test_through_a_proxyjump_the_jump_hosts_socket_is_the_one_set(tcp_pair):
    # pyinfra connects a ProxyJump target over a channel of the jump host's transport; with two
    # jump hosts, over a channel of a transport that is itself over a channel.
    client, _ = tcp_pair
    one_hop = _channel_over(client)
    two_hops = _channel_over(_channel_over(client))
    assert not _nagle_off(client)
    assert no_delay(two_hops) is True
    assert _nagle_off(client)
    assert no_delay(one_hop) is True


def test_anything_but_a_tcp_socket_is_left_as_it_is(monkeypatch):
    left, right = socket.socketpair()  # a Unix socket: setting the option would raise
    command = paramiko.ProxyCommand("cat")  # a ProxyCommand's pipes to its process
    set_on = []
    monkeypatch.setattr(socket.socket, "setsockopt", lambda self, *args: set_on.append(self))
    try:
        assert no_delay(left) is False
        no_delay_transport(left)
        assert no_delay(command) is False
        assert set_on == []  # told apart before any setsockopt, not by its error
    finally:
        monkeypatch.undo()
        left.close()
        right.close()
        command.close()
        command.process.wait(5)


def test_a_socket_the_kernel_refuses_it_for_stays_as_it_was(tcp_pair):
    client, _ = tcp_pair
    client.close()  # setsockopt: EBADF; on macOS a peer that already closed gives EINVAL
    assert no_delay(client) is False


@pytest.mark.parametrize("path", INVENTORIES)
def test_every_host_of_every_inventory_connects_through_the_factory(path):
    # A group's own ssh_paramiko_connect_kwargs would replace group_data/all.py's dict.
    from gpufleet.fleet import load_inventory

    for host in load_inventory(str(PROJECT_ROOT / path), cwd=str(PROJECT_ROOT)):
        assert host.data.ssh_paramiko_connect_kwargs.get("transport_factory") is no_delay_transport, host.name


def test_pyinfra_still_prints_the_inventory():
    # debug-inventory encodes every host's data as JSON: a function prints as one, a class would fail.
    run = subprocess.run([sys.executable, "-m", "pyinfra", "inventory/prod.py", "debug-inventory"],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert '"transport_factory": "Function: no_delay_transport"' in run.stdout + run.stderr


def test_data_that_drops_the_factory_is_a_warning_naming_the_host_and_its_keys():
    from gpufleet.settings import validate_host_data

    _, kept = validate_host_data("gpu-node-01", {"ssh_paramiko_connect_kwargs": {
        "transport_factory": no_delay_transport, "banner_timeout": 30}})
    assert [i for i in kept if i.key == "ssh_paramiko_connect_kwargs"] == []
    _, dropped = validate_host_data("gpu-node-01", {"ssh_paramiko_connect_kwargs": {
        "banner_timeout": 30, "password": "hunter2"}})
    [issue] = [i for i in dropped if i.key == "ssh_paramiko_connect_kwargs"]
    assert (issue.host, issue.value, issue.severity) == ("gpu-node-01", ["banner_timeout", "password"], "warning")
    assert "no_delay_transport" in issue.expected and "hunter2" not in str(issue.as_dict())
    _, unset = validate_host_data("gpu-node-01", {"ssh_paramiko_connect_kwargs": None})  # set to nothing: no factory
    assert [i.value for i in unset if i.key == "ssh_paramiko_connect_kwargs"] == [None]
