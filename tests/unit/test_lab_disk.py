"""`lab up` refuses to start GPU nodes that this machine's disk cannot hold (gpufleet/lab/disk.py).

The free space is set by each test, not read from this machine: a CI machine's disk is shared and
its free space moves during the run (it once had 1.9 GiB free when this ran), so a test that read
the real disk would pass or fail with the weather.
"""

import shutil

import pytest

from gpufleet.lab import disk


class _Images:
    def __init__(self, sizes):
        self.sizes = sizes

    def get(self, tag):
        return type("Image", (), {"attrs": {"Size": self.sizes[tag]}})()


class _Engine:
    """The two calls check_room makes of docker-py's client: info() and images.get()."""

    def __init__(self, root, sizes):
        self.root, self.images = root, _Images(sizes)

    def info(self):
        return {"DockerRootDir": str(self.root)}


@pytest.fixture
def free_bytes(monkeypatch):
    """Set the free space check_room sees under any path; returns a setter."""
    seen = {}

    def disk_usage(path):
        seen["path"] = str(path)
        return shutil._ntuple_diskusage(100 * disk.GIB, 100 * disk.GIB - seen["free"], seen["free"])

    monkeypatch.setattr(disk.shutil, "disk_usage", disk_usage)

    def set_free(value):
        seen["free"] = value
        return seen

    return set_free


def test_refuses_when_the_new_nodes_would_not_fit(tmp_path, free_bytes):
    seen = free_bytes(int(7.5 * disk.GIB))
    engine = _Engine(tmp_path, {"vllm": 2 * disk.GIB, "milvus": disk.GIB})
    with pytest.raises(disk.NotEnoughDisk) as err:
        disk.check_room(engine, 2, ["vllm", "milvus"])  # 2 × (3 GiB pulled + 2 GiB extra) = 10 GiB
    message = str(err.value)
    assert seen["path"] == str(tmp_path)
    assert str(tmp_path) in message and "2 new GPU node(s)" in message and "--nodes 1" in message
    assert "7.5 GiB free" in message and "about 10.0 GiB" in message and "(3.0 GiB)" in message


def test_accepts_what_fits_and_nodes_that_exist(tmp_path, free_bytes):
    free_bytes(10 * disk.GIB)
    disk.check_room(_Engine(tmp_path, {"vllm": 2 * disk.GIB, "milvus": disk.GIB}), 2, ["vllm", "milvus"])  # exactly fits
    with pytest.raises(disk.NotEnoughDisk):
        disk.check_room(_Engine(tmp_path, {"vllm": 2 * disk.GIB + 1, "milvus": disk.GIB}), 2, ["vllm", "milvus"])
    huge = _Engine(tmp_path, {"vllm": 10 ** 18})
    disk.check_room(huge, 0, ["vllm"])  # no new node pulls anything


def test_an_engine_elsewhere_is_not_checked(tmp_path, free_bytes):
    free_bytes(0)
    disk.check_room(_Engine(tmp_path / "absent", {"vllm": 10 ** 18}), 2, ["vllm"])
