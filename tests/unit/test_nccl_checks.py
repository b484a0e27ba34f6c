"""operations/nccl_checks.py: the answers of earlier NCCL checks, per container run, kept 0600."""

from __future__ import annotations

import stat

from operations import nccl_checks


def test_answers_are_kept_for_the_containers_running_now_only(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUFLEET_CACHE_DIR", str(tmp_path))
    assert nccl_checks.known("gpu-node-1") == {}
    nccl_checks.remember("gpu-node-1", {"containers": {"vllm-a": "2.27.7", "vllm-b": None},
                                         "keys": {"vllm-a": "a@img@t1", "vllm-b": "b@img@t1"}})
    assert nccl_checks.known("gpu-node-1") == {"a@img@t1": "2.27.7"}  # no answer, nothing kept
    path = nccl_checks.cache_file("gpu-node-1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # vllm-a restarted (another key): its old answer goes, the new one is kept.
    nccl_checks.remember("gpu-node-1", {"containers": {"vllm-a": "2.27.7"}, "keys": {"vllm-a": "a@img@t2"}})
    assert nccl_checks.known("gpu-node-1") == {"a@img@t2": "2.27.7"}
    assert nccl_checks.known("gpu-node-2") == {}


def test_an_unreadable_file_counts_as_empty(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUFLEET_CACHE_DIR", str(tmp_path))
    path = nccl_checks.cache_file("gpu-node-1")
    path.parent.mkdir(parents=True)
    for text in ("not json", "[1, 2]", '{"k": 3}'):
        path.write_text(text)
        assert nccl_checks.known("gpu-node-1") == {}
