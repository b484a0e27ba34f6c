"""gpufleet/milvus_dump.py against a fake Milvus: its load handling (a backup or a row count leaves
every collection loaded as Milvus had it, and never releases one Milvus is (re)loading for the app),
a restore through a temporary collection that never loses the original's rows, exact row counts,
an export that notices rows read twice or skipped, and the files reaching the disk."""

from __future__ import annotations

import ast
import json
import os
import re
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest
from pymilvus.exceptions import MilvusException

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


# -- A fake Milvus behind pymilvus's names ---------------------------------------------------------
# Collection and utility are replaced; the schema classes and the query iterator are pymilvus's own
# (2.3.8, as pinned): the export pages through the real QueryIterator, which writes its cursor into
# the expression as `pk > "<last>"`, and the fake reads that literal with escapes, as Milvus's parser
# does (Go's strconv.Unquote; Python's literal syntax agrees on \b, \x.., \\ and \").

STAGING = "docs__gpufleet_restore"  # milvus_dump.RESTORE_SUFFIX


class Stored:
    """One collection inside the fake Milvus: rows flushed (sealed) or not (growing), indexes, load state."""

    def __init__(self, schema):
        self.schema, self.sealed, self.growing, self.indexes, self.loaded = schema, [], [], [], False

    @property
    def rows(self) -> list[dict]:
        return self.sealed + self.growing


class FakeMilvus:
    def __init__(self):
        self.collections: dict[str, Stored] = {}
        self.fail: dict[str, Exception] = {}  # operation -> what it raises (any collection)
        self.before: dict[str, Callable[[str], None]] = {}  # operation -> called with the collection's name
        self.log: list[tuple[str, ...]] = []

    def rows(self, name: str) -> list[dict] | None:
        return self.collections[name].rows if name in self.collections else None

    def add(self, name: str, rows: list[dict], flushed: bool = True, indexed: bool = True, loaded: bool = False,
            key_type=None) -> Stored:
        from pymilvus import CollectionSchema, DataType, FieldSchema

        key = (FieldSchema("id", DataType.INT64, is_primary=True) if key_type is None
               else FieldSchema("id", key_type, is_primary=True, max_length=64))
        stored = Stored(CollectionSchema([key, FieldSchema("text", DataType.VARCHAR, max_length=256),
                                          FieldSchema("vector", DataType.FLOAT_VECTOR, dim=2)]))
        (stored.sealed if flushed else stored.growing).extend(rows)
        if indexed:
            stored.indexes.append(("vector", {"index_type": "FLAT", "metric_type": "L2", "params": {}}, "vector"))
        stored.loaded = loaded
        self.collections[name] = stored
        return stored

    def step(self, operation: str, name: str) -> None:
        self.log.append((operation, name))
        if operation in self.before:
            self.before[operation](name)
        if operation in self.fail:
            raise self.fail[operation]

    # pymilvus.utility
    def utility(self):
        from pymilvus.client.types import LoadState

        def drop_collection(name):
            self.step("drop", name)
            del self.collections[name]

        def rename_collection(old, new, new_db_name="", timeout=None, using="default"):
            self.step("rename", old)
            if new in self.collections:
                raise MilvusException(message=f"duplicated new collection name {new}")
            self.collections[new] = self.collections.pop(old)

        return types.SimpleNamespace(
            list_collections=lambda: list(self.collections), has_collection=lambda name: name in self.collections,
            drop_collection=drop_collection, rename_collection=rename_collection,
            load_state=lambda name: LoadState.Loaded if self.collections[name].loaded else LoadState.NotLoad)

    # pymilvus.Collection
    def collection_class(self):
        milvus = self

        class Collection:
            def __init__(self, name, schema=None, consistency_level=None):
                if name not in milvus.collections:
                    if schema is None:
                        raise MilvusException(message=f"collection {name} not found")
                    milvus.step("create", name)
                    milvus.collections[name] = Stored(schema)
                self.name = name

            @property
            def _stored(self) -> Stored:
                return milvus.collections[self.name]

            @property
            def schema(self):
                return self._stored.schema

            @property
            def indexes(self):
                return [types.SimpleNamespace(field_name=f, params=p, index_name=n) for f, p, n in self._stored.indexes]

            @property
            def num_entities(self) -> int:  # segment statistics: flushed rows only
                return len(self._stored.sealed)

            def has_index(self) -> bool:
                return bool(self._stored.indexes)

            def insert(self, rows):
                milvus.step("insert", self.name)
                self._stored.growing.extend(dict(r) for r in rows)

            def flush(self):
                milvus.step("flush", self.name)
                self._stored.sealed += self._stored.growing
                self._stored.growing = []

            def create_index(self, field, params, index_name=""):
                milvus.step("create_index", self.name)
                self._stored.indexes.append((field, params, index_name))

            def load(self):
                milvus.step("load", self.name)
                if not self._stored.indexes:
                    raise MilvusException(message=f"index not found for {self.name}")
                self._stored.loaded = True

            def release(self):
                self._stored.loaded = False

            def query(self, expr, output_fields=None, consistency_level=None, **kwargs):
                assert output_fields == ["count(*)"] and consistency_level == "Strong"
                return self._read(expr, {})

            def query_iterator(self, batch_size, expr, output_fields, consistency_level):
                from pymilvus.orm.iterator import QueryIterator

                return QueryIterator(Connection(), self.name, batch_size=batch_size, expr=expr,
                                     output_fields=output_fields, schema=self.schema.to_dict(),
                                     consistency_level=consistency_level)

            def _read(self, expr, kwargs):
                if not self._stored.loaded:
                    raise MilvusException(message=f"collection {self.name} not loaded")
                if "count(*)" in (kwargs.get("output_fields") or ["count(*)"]) and "limit" not in kwargs:
                    return [{"count(*)": len(self._stored.rows)}]
                milvus.step("page", self.name)
                rows = sorted(self._stored.rows, key=lambda r: r["id"])
                if expr:
                    field, literal = re.fullmatch(r'(\w+) > ("(?:.*)"|-?\d+)', expr).groups()
                    cursor = ast.literal_eval(literal)  # a string literal, escapes and all
                    rows = [r for r in rows if r[field] > cursor]
                return [dict(r) for r in rows[:kwargs["limit"]]]

        class Connection:
            """What QueryIterator pages through (pymilvus's connection handler's query)."""

            def query(self, collection_name, expr, output_fields=None, partition_names=None, timeout=None, **kw):
                return Collection(collection_name)._read(expr, {"output_fields": output_fields, **kw})

        return Collection


@pytest.fixture
def milvus(monkeypatch) -> FakeMilvus:
    fake = FakeMilvus()
    monkeypatch.setattr(sys.modules["pymilvus"], "utility", fake.utility())
    monkeypatch.setattr(sys.modules["pymilvus"], "Collection", fake.collection_class())
    return fake


def row(key, text: str = "doc") -> dict:
    return {"id": key, "text": text, "vector": [0.5, 0.25]}


BACKUP_ROWS = [row(1, "one"), row(2, "two"), row(3, "three")]


def a_backup(tmp_path) -> Path:
    """A backup of one collection, docs, with BACKUP_ROWS: exported by milvus_dump from a fake Milvus."""
    source = FakeMilvus()
    source.add("docs", BACKUP_ROWS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys.modules["pymilvus"], "utility", source.utility())
        patch.setattr(sys.modules["pymilvus"], "Collection", source.collection_class())
        manifest = milvus_dump.export(tmp_path / "backup")
    (tmp_path / "backup" / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path / "backup"


def test_a_restore_replaces_a_collection_only_once_its_copy_holds_every_row_and_leaves_it_loaded(milvus, tmp_path):
    source = a_backup(tmp_path)
    milvus.add("docs", [row(9, "the app's")], loaded=True)
    result = milvus_dump.restore(source, replace=True)
    assert result == {"docs": {"rows": 3, "expected": 3, "ids_renewed": False}}
    assert milvus.rows("docs") == BACKUP_ROWS and milvus.collections["docs"].loaded
    assert STAGING not in milvus.collections
    steps = [(op, name) for op, name in milvus.log if op in ("create", "load", "drop", "rename")]
    # written, indexed, loaded and counted under the temporary name; then the original goes and the copy takes its name
    assert steps == [("create", STAGING), ("load", STAGING), ("drop", "docs"), ("rename", STAGING), ("load", "docs")]


@pytest.mark.parametrize("failing", ["insert", "flush", "create_index", "load", "rows lost"])
def test_a_restore_that_fails_midway_leaves_the_collection_as_it_was(milvus, tmp_path, failing):
    source = a_backup(tmp_path)
    milvus.add("docs", [row(9, "the app's")], loaded=True)
    if failing == "rows lost":  # Milvus took the insert but holds fewer rows
        milvus.before["flush"] = lambda name: milvus.collections[name].growing.pop()
    else:
        milvus.fail[failing] = MilvusException(message=f"{failing} went wrong")
    with pytest.raises((SystemExit, MilvusException)) as failed:
        milvus_dump.restore(source, replace=True)
    assert milvus.rows("docs") == [row(9, "the app's")]  # its rows, untouched
    assert STAGING not in milvus.collections  # the temporary copy dropped
    assert isinstance(failed.value, SystemExit)  # a message, not a traceback
    assert str(failed.value).startswith("restore of docs failed while ")
    assert ("2 rows, 3 in the backup" if failing == "rows lost" else f"{failing} went wrong") in str(failed.value)
    assert str(failed.value).endswith("docs is as it was")


def test_a_temporary_collection_left_by_a_killed_restore_is_dropped_first(milvus, tmp_path):
    source = a_backup(tmp_path)
    milvus.add(STAGING, [row(7, "half a restore")])
    milvus_dump.restore(source)
    assert milvus.rows("docs") == BACKUP_ROWS
    assert STAGING not in milvus.collections
    assert milvus.log[0] == ("drop", STAGING)


@pytest.mark.parametrize("indexed", [True, False])
def test_without_replace_a_collection_with_rows_not_flushed_yet_is_refused(milvus, tmp_path, indexed):
    """num_entities counts flushed segments only: the app's newest rows are in none yet."""
    source = a_backup(tmp_path)
    milvus.add("docs", [row(8), row(9)], flushed=False, indexed=indexed)
    with pytest.raises(SystemExit, match="docs: exists with 2 rows"):
        milvus_dump.restore(source)
    assert milvus.rows("docs") == [row(8), row(9)]
    assert not milvus.collections["docs"].loaded  # counted loaded only if it could be, then released as it was
    assert not any(op in ("drop", "create", "insert") for op, _ in milvus.log)


def test_without_replace_rows_written_during_the_restore_keep_the_collection(milvus, tmp_path):
    """Empty at the check, written by the app while the copy was made: counted again, and kept."""
    source = a_backup(tmp_path)
    milvus.add("docs", [])
    app_rows = [row(42, "written meanwhile")]

    def app_writes(name):
        if "docs" in milvus.collections and not milvus.collections["docs"].rows:
            milvus.collections["docs"].growing.extend(app_rows)

    milvus.before["insert"] = app_writes
    with pytest.raises(SystemExit, match="restore of docs refused: it holds 1 rows now"):
        milvus_dump.restore(source)
    assert milvus.rows("docs") == app_rows
    assert STAGING not in milvus.collections


def test_an_export_that_reads_a_key_twice_fails_naming_the_collection(milvus, tmp_path, monkeypatch):
    """pymilvus pages with `id > "a\\b"`: Milvus reads a backspace there, and "a\\b" comes back again."""
    from pymilvus import DataType

    monkeypatch.setattr(milvus_dump, "BATCH", 2)
    milvus.add("docs", [row("a"), row("a\\b"), row("a\\c"), row("b")], key_type=DataType.VARCHAR)
    with pytest.raises(SystemExit, match=r"export of docs failed: primary key 'a\\\\b' came after "
                                                       r"'a\\\\b', not above it"):
        milvus_dump.export(tmp_path / "out")
    assert not milvus.collections["docs"].loaded  # released as it was, failure or not


def test_an_export_that_skips_keys_fails_on_its_row_count(milvus, tmp_path, monkeypatch):
    """`id > "a\\x7f"` reads as a DEL character: "a\\y" sorts below it and is never read."""
    from pymilvus import DataType

    monkeypatch.setattr(milvus_dump, "BATCH", 2)
    milvus.add("docs", [row("a"), row("a\\x7f"), row("a\\y"), row("b")], key_type=DataType.VARCHAR)
    with pytest.raises(SystemExit, match="export of docs failed: 3 rows read, 4 in the collection "
                                                       r"when its export began \(4 now\)"):
        milvus_dump.export(tmp_path / "out")


def test_rows_written_during_an_export_are_kept_and_counted(milvus, tmp_path, monkeypatch):
    monkeypatch.setattr(milvus_dump, "BATCH", 2)
    milvus.add("docs", [row(k) for k in range(1, 6)], loaded=True)
    milvus.before["page"] = lambda name: milvus.collections[name].growing.extend(
        [] if any(r["id"] == 100 for r in milvus.collections[name].rows) else [row(100)])
    manifest = milvus_dump.export(tmp_path / "out")
    assert manifest["collections"]["docs"]["rows"] == 6
    assert len((tmp_path / "out" / "docs.jsonl").read_text().splitlines()) == 6


@pytest.fixture
def synced(monkeypatch) -> list[str]:
    """Every path os.fsync is called on, in order (then the real fsync)."""
    paths: list[str] = []
    real = os.fsync

    def fsync(fd):
        paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return paths


def test_an_export_reaches_the_disk_each_file_then_the_manifest_then_the_directory(milvus, tmp_path, monkeypatch,
                                                                                   synced, capsys):
    milvus.add("docs", BACKUP_ROWS)
    milvus.add("faq", [row(1)])
    monkeypatch.setattr(milvus_dump, "_connect", lambda uri, user, password: None)
    out = tmp_path / "out"
    assert milvus_dump.main(["export", "--uri", "http://127.0.0.1:1", "--dir", str(out)]) == 0
    assert json.loads(capsys.readouterr().out) == {"docs": 3, "faq": 1}
    assert synced == [str(out / "docs.jsonl"), str(out / "faq.jsonl"), str(out / "manifest.json"), str(out)]


def test_a_copy_restored_but_not_renamed_is_named_in_the_error(milvus, tmp_path):
    source = a_backup(tmp_path)
    milvus.add("docs", [row(9, "the app's")], loaded=True)
    milvus.fail["rename"] = MilvusException(message="rootcoord unavailable")
    with pytest.raises(SystemExit, match=f"restore of docs: its rows are restored in {STAGING}, but renaming it "
                                         "to docs \\(the old one dropped\\) failed: .*rootcoord unavailable"):
        milvus_dump.restore(source, replace=True)
    assert milvus.rows(STAGING) == BACKUP_ROWS  # the restored rows are there to rename by hand


def test_a_restores_temporary_copy_is_neither_backed_up_nor_counted(milvus, tmp_path):
    """A restore building its copy while the nightly backup runs: the copy has no index yet."""
    milvus.add("docs", BACKUP_ROWS, loaded=True)
    milvus.add(STAGING, [row(7)], indexed=False)
    assert list(milvus_dump.export(tmp_path / "out")["collections"]) == ["docs"]
    assert milvus_dump.counts() == {"docs": 3}
