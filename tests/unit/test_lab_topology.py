"""The lab's shapes (gpufleet/lab/topology.py): which hosts `gpufleet lab up` starts, and which
host inventory/lab.py names as the Milvus host."""

from __future__ import annotations

import pytest

from gpufleet.lab import topology


def test_a_data_host_is_a_host_of_its_own_in_group_vector_db_with_nothing_published():
    hosts = topology.lab_hosts(2, 1, data_hosts=1)
    assert [(h.name, h.group) for h in hosts] == [("gpu-node-1", "gpu_nodes"), ("gpu-node-2", "gpu_nodes"),
                                                  ("lb-1", "lb"), ("db-1", "vector_db")]
    db = hosts[-1]
    assert db.service_ports() == {}  # Milvus is for the lab network only
    assert len({h.ssh_port for h in topology.lab_hosts(40, 9, data_hosts=1)}) == 50  # no port shared
    with pytest.raises(ValueError, match=r"data hosts=2 \(0..1\)"):
        topology.lab_hosts(2, 1, data_hosts=2)


@pytest.mark.parametrize(("data_hosts", "nodes", "milvus_host"), [(0, 2, "gpu-node-2"), (0, 1, "gpu-node-1"),
                                                                  (1, 2, "db-1")])
def test_the_inventory_names_db_1_as_the_milvus_host_when_the_lab_has_it(monkeypatch, data_hosts, nodes,
                                                                         milvus_host):
    monkeypatch.setattr(topology, "read_hosts_file", lambda: topology.lab_hosts(nodes, 1, data_hosts))
    groups = topology.inventory_groups()
    # A GPU node is named (its connection data is in gpu_nodes); db-1 comes with its own.
    assert [entry if isinstance(entry, str) else entry[0] for entry in groups["vector_db"]] == [milvus_host]
    assert [name for name, _ in groups["gpu_nodes"]] == [f"gpu-node-{i}" for i in range(1, nodes + 1)]
    if data_hosts:
        assert groups["vector_db"][0][1]["ssh_port"] == topology.DB_SSH_PORT_BASE + 1


def test_a_booted_host_gives_its_key_not_an_empty_answer(monkeypatch):
    """Docker under load can answer an exec that exited 0 with no output; an empty key written to
    known_hosts locked every SSH client out of gpu-node-1 (CI, stop 26). The wait asks again."""
    from gpufleet.lab import hosts

    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHnghnag root@gpu-node-1"
    answers = iter([(0, b"running\n"), (0, b""), (0, b"running\n"), (0, f"{key}\n".encode())])

    class Container:
        name = "gpu-node-1"

        def exec_run(self, command):
            return next(answers)

    monkeypatch.setattr(hosts.time, "sleep", lambda s: None)
    assert hosts.wait_until_booted(Container()) == key
