"""`lab up` refuses to start GPU nodes that this machine's disk cannot hold (gpufleet/lab/disk.py)."""

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


def test_refuses_when_the_new_nodes_would_not_fit(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    engine = _Engine(tmp_path, {"vllm": free // 2, "milvus": 1})
    with pytest.raises(disk.NotEnoughDisk) as err:
        disk.check_room(engine, 2, ["vllm", "milvus"])
    message = str(err.value)
    assert str(tmp_path) in message and "2 new GPU node(s)" in message and "--nodes 1" in message
    assert f"{free / disk.GIB:.1f} GiB free" in message


def test_accepts_what_fits_and_nodes_that_exist(tmp_path):
    engine = _Engine(tmp_path, {"vllm": 1024})
    disk.check_room(engine, 1, ["vllm"])  # a kilobyte image and 2 GiB of extras: fits this machine
    huge = _Engine(tmp_path, {"vllm": 10 ** 18})
    disk.check_room(huge, 0, ["vllm"])  # no new node pulls anything


def test_an_engine_elsewhere_is_not_checked(tmp_path):
    disk.check_room(_Engine(tmp_path / "absent", {"vllm": 10 ** 18}), 2, ["vllm"])
