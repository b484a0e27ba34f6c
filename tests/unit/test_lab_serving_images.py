"""gpufleet/lab/serving_images.py: the vLLM image builds beside the others, each pushed once built."""

from __future__ import annotations

import threading

import pytest

from gpufleet.lab import serving_images


def test_the_other_lane_builds_and_publishes_while_vllm_builds(monkeypatch):
    others_published = threading.Event()
    published: list[str] = []

    def vllm(client, base):
        # Returns only once the other lane has pushed: one after another, this would wait forever.
        assert others_published.wait(timeout=10), "the other images waited for the vLLM build"
        return [("vllm-local", "vllm:1")]

    def milvus(client, base):
        return [("milvus-local", "milvus:1")]

    def app(client, base):
        return [("app-local", "app:1")]

    clients: list[object] = []
    used: dict[str, object] = {}

    def new_client():
        clients.append(object())
        return clients[-1]

    def publish(client, local_tag, name):
        used[name] = client
        published.append(name)
        if name == "app:1":
            others_published.set()

    monkeypatch.setattr(serving_images, "LANES", [[vllm], [milvus, app]])
    pairs = serving_images.build_all(new_client, "base", publish)
    assert pairs == [("vllm-local", "vllm:1"), ("milvus-local", "milvus:1"), ("app-local", "app:1")]
    assert published == ["milvus:1", "app:1", "vllm:1"]
    # A Docker client per lane: the other lane's two images share one, vLLM's is another.
    assert len(clients) == 2 and used["milvus:1"] is used["app:1"] is not used["vllm:1"]


def test_a_failed_build_fails_the_whole_start(monkeypatch):
    def broken(client, base):
        raise RuntimeError("pip: no matching distribution")

    monkeypatch.setattr(serving_images, "LANES", [[broken], [lambda client, base: [("a", "a:1")]]])
    with pytest.raises(RuntimeError, match="no matching distribution"):
        serving_images.build_all(object, "base", lambda *args: None)
