"""gpufleet/milvus_dump.py's load handling: a backup or a row count leaves every collection loaded
as Milvus had it, and never releases one Milvus is (re)loading for the app."""

from __future__ import annotations

import sys
import types

import pytest

from gpufleet import milvus_dump


class FakeCollection:
    def __init__(self, name: str, indexed: bool = True):
        self.name, self.indexed, self.calls = name, indexed, []

    def has_index(self) -> bool:
        return self.indexed

    def load(self) -> None:
        self.calls.append("load")


@pytest.fixture
def load_states(monkeypatch):
    """pymilvus's utility.load_state answering from a dict (pymilvus is installed: its enum is the real one)."""
    from pymilvus.client.types import LoadState

    states: dict[str, LoadState] = {}
    utility = types.SimpleNamespace(load_state=lambda name: states[name])
    monkeypatch.setattr(sys.modules["pymilvus"], "utility", utility)
    return states, LoadState


@pytest.mark.parametrize(("state", "kept_loaded"), [("Loaded", True), ("Loading", True), ("NotLoad", False)])
def test_a_collection_milvus_loads_or_is_loading_is_never_released_afterwards(load_states, state, kept_loaded):
    states, LoadState = load_states
    states["docs"] = getattr(LoadState, state)
    collection = FakeCollection("docs")
    assert milvus_dump.opened(collection) is kept_loaded  # False: the caller releases what it loaded
    assert collection.calls == ["load"]  # read after a load that waits: a loading one is waited for


def test_a_collection_without_an_index_stops_the_backup(load_states):
    states, LoadState = load_states
    states["raw"] = LoadState.NotLoad
    with pytest.raises(milvus_dump.Unreadable, match="raw has no index"):
        milvus_dump.opened(FakeCollection("raw", indexed=False))
