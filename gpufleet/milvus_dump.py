"""A logical backup of Milvus: every collection's schema, indexes and rows, with a manifest.

Run by ``gpufleet backup`` / ``gpufleet restore`` in a child process (``python -m
gpufleet.milvus_dump``) against a local port that the parent forwards over SSH to the Milvus host
(operations/port_forward.py): gRPC does not run under the gevent monkey-patching the gpufleet CLI
needs for pyinfra, so pymilvus lives in its own process.

Why a logical export, and not Milvus's own tool or a copy of the volumes:

- milvus-backup (Milvus's backup tool) ships as a Go binary on GitHub releases: no Debian or PyPI
  package, so neither the control host nor CI can install it from the project's own files;
- a copy of the volumes needs Milvus stopped (every RAG replica answers 503 meanwhile) and comes
  back only on the same Milvus version and mode;
- an export through the API (pymilvus, the client the app uses) runs while Milvus serves, restores
  onto a fresh Milvus, another mode or a newer version (the way across an upgrade), and is
  checkable: the manifest holds each collection's row count and each file's sha256.

Its limits: each collection is read with Strong consistency at one moment, so a write that lands
during the export may or may not be in it; indexes are rebuilt on restore (their parameters are
kept), which takes time on a large collection, and a collection being replaced is held twice
while its copy is built (the original and the copy both loaded: Milvus needs the memory for both);
rows are JSON lines (vectors as float lists), about 3x the size of Milvus's own segments. Kept: the default database's collections, their schema
(dynamic fields too), index parameters and rows. Not kept: partitions (rows come back in the
default partition), aliases, collection properties (TTL), users and roles, other databases; a
primary key that Milvus generates (``auto_id``) comes back with new ids (Milvus refuses given
ones). A collection without an index cannot be loaded, so it stops the backup, naming it. Past tens of millions of vectors, Milvus's distributed
deployment and its backup tool are the answer (README "The data tier").

Layout of a backup directory::

    manifest.json            {"format": 1, "created", "collections": {name: {"rows", "file", "sha256",
                              "schema", "indexes"}}}
    <collection>.jsonl       one row per line
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from gpufleet.private_files import sync_dir

FORMAT = 1
BATCH = 1000
# A restore writes each collection under this name first (see restore()).
RESTORE_SUFFIX = "__gpufleet_restore"


def collections() -> list[str]:
    """The connected Milvus's collections, sorted, without a restore's temporary copies (one that is
    being built, or one a killed restore left: not the app's data, not backed up or counted)."""
    from pymilvus import utility

    return sorted(name for name in utility.list_collections() if not name.endswith(RESTORE_SUFFIX))


def _connect(uri: str, user: str | None, password: str | None):
    from pymilvus import connections

    kwargs = {"user": user, "password": password} if user else {}
    connections.connect(alias="default", uri=uri, timeout=30, **kwargs)


def _jsonable(value: Any) -> Any:
    """Row values as JSON: numpy scalars and float32 lists come back from pymilvus in several shapes."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


class Unreadable(SystemExit):
    """A collection Milvus cannot read rows from (it has no index, so it cannot be loaded)."""


def opened(collection) -> bool:
    """Load ``collection`` for reading; True when it was loaded already, or being loaded by Milvus
    (then leave it loaded). The caller releases it afterwards only when this returns False.

    A collection Milvus is loading (right after a restart it reloads what was loaded: the moment a
    rollout counts rows after a Milvus upgrade) is the app's: this waits for it, and it must never
    be released by a backup or a row count, or every app query fails with "collection not loaded"
    until someone loads it again.

    A collection without an index cannot be loaded, so its rows cannot be read: that stops the
    backup (a backup that silently left a collection out would be worse than none).
    """
    from pymilvus import utility
    from pymilvus.client.types import LoadState

    state = utility.load_state(collection.name)
    if state in (LoadState.Loaded, LoadState.Loading):
        collection.load()  # returns once loaded; a no-op for a loaded one
        return True
    if not collection.has_index():
        raise Unreadable(f"collection {collection.name} has no index: Milvus cannot load it, so its rows cannot "
                         "be read (create an index on its vector field, then back up again)")
    collection.load()
    return False


def count_rows(collection) -> int:
    """The rows of a loaded collection, exactly: ``count(*)`` with Strong consistency counts every row
    inserted before it, flushed or not (``num_entities`` only flushed ones). pymilvus 2.3 hands the
    field to Milvus as it is; Milvus 2.3 and later answer it."""
    rows = collection.query(expr="", output_fields=["count(*)"], consistency_level="Strong")
    return int(rows[0]["count(*)"]) if rows else 0  # [] is pymilvus's answer for an empty collection


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ExportFailed(SystemExit):
    """An export whose rows do not check out: a primary key out of order, or fewer rows than the collection held."""


def export(out: Path) -> dict[str, Any]:
    """Write every collection of the connected Milvus into ``out``; return the manifest.

    Each collection's rows are checked as they are read: pymilvus 2.3's iterator pages with
    ``pk > "<last key>"`` written into the expression unescaped, so a VARCHAR key holding a
    backslash or a quote makes it read rows again or skip some. Every key must be above the one
    before it, and at the end at least as many rows must have been written as the collection held
    when its export began (more is fine: rows written meanwhile); otherwise the export fails,
    naming the collection. Each file reaches the disk (fsync) before the next one is written.
    """
    from pymilvus import Collection

    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    manifest: dict[str, Any] = {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                "collections": {}}
    for name in collections():
        collection = Collection(name)
        was_loaded = opened(collection)
        try:
            manifest["collections"][name] = _export_collection(collection, out / f"{name}.jsonl")
        finally:
            if not was_loaded:  # as it was: a released collection holds no memory
                collection.release()
    return manifest


def _export_collection(collection, path: Path) -> dict[str, Any]:
    """One loaded collection's rows into ``path``, checked (see :func:`export`); its manifest entry."""
    name, key = collection.name, collection.schema.primary_field.name
    at_start = count_rows(collection)
    written, last = 0, None
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        iterator = collection.query_iterator(batch_size=BATCH, expr="", output_fields=["*"],
                                             consistency_level="Strong")
        while True:
            batch = iterator.next()
            if not batch:
                break
            for row in batch:
                if last is not None and not row[key] > last:
                    raise ExportFailed(
                        f"export of {name} failed: primary key {row[key]!r} came after {last!r}, not above it "
                        f"(pymilvus pages with `{key} > \"<last key>\"` unescaped: a key with a backslash or "
                        "a quote makes it read rows twice or skip some)")
                last = row[key]
                f.write(json.dumps(_jsonable(dict(row)), sort_keys=True) + "\n")
                written += 1
        iterator.close()
        f.flush()
        os.fsync(f.fileno())
    if written < at_start:
        raise ExportFailed(
            f"export of {name} failed: {written} rows read, {at_start} in the collection when its export began "
            f"({count_rows(collection)} now): rows were skipped (pymilvus's paging with a primary key holding a "
            "backslash or a quote) or deleted during the export")
    return {
        "rows": written, "file": path.name, "sha256": sha256_file(path),
        "schema": collection.schema.to_dict(),
        "indexes": [{"field": i.field_name, "name": i.index_name, "params": _jsonable(i.params)}
                    for i in collection.indexes],
    }


def verify_files(source: Path, manifest: dict[str, Any]) -> list[str]:
    """Every file the manifest names, present and with its sha256; the problems, or ``[]``."""
    problems = []
    for name, entry in manifest["collections"].items():
        path = source / entry["file"]
        if not path.is_file():
            problems.append(f"{name}: {path} is missing")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{name}: {path} does not match its sha256 in the manifest")
    return problems


class RestoreFailed(SystemExit):
    """A collection that could not be restored; the message names it, the step, and what was left."""


def rows_held(collection) -> int:
    """The rows an existing collection holds now, exactly (``num_entities`` counts flushed segments
    only: rows the app inserted a moment ago are not in it). Loaded for the count if it was not
    (and released again); one without an index cannot be loaded: it is flushed, and then its
    segment statistics count every row (deleted ones not compacted yet too: never fewer)."""
    try:
        was_loaded = opened(collection)
    except Unreadable:
        collection.flush()
        return collection.num_entities
    try:
        return count_rows(collection)
    finally:
        if not was_loaded:
            collection.release()


def restore(source: Path, replace: bool = False) -> dict[str, Any]:
    """Recreate every collection of the backup in the connected Milvus; return what each holds now.

    Nothing is written unless every file matches the manifest, and no collection that exists with
    rows is touched unless ``replace``. Each collection is restored into ``<name>__gpufleet_restore``
    first (one left by a restore that was killed is dropped before), and only once that holds the
    manifest's rows, indexed and loaded, is the original dropped and the new one renamed to its
    name: a failure on the way drops the new one and leaves the original as it was. Without
    ``replace`` the original's rows are counted again right before (the app may have written
    since the check), and one that holds rows then is not dropped.
    """
    from pymilvus import Collection, utility

    manifest = json.loads((source / "manifest.json").read_text())
    if manifest.get("format") != FORMAT:
        raise SystemExit(f"{source}: backup format {manifest.get('format')!r}, this gpufleet reads {FORMAT}")
    problems = verify_files(source, manifest)
    existing = set(utility.list_collections())
    for name in manifest["collections"]:
        if name in existing and not replace:
            rows = rows_held(Collection(name))
            if rows:
                problems.append(f"{name}: exists with {rows} rows (restore --replace replaces it)")
    if problems:
        raise SystemExit("restore refused, nothing changed:\n  " + "\n  ".join(problems))
    result: dict[str, Any] = {}
    for name, entry in manifest["collections"].items():
        try:
            result[name] = _restore_collection(source, name, entry, replace)
        except RestoreFailed as exc:
            done = f" (restored before it: {', '.join(result)})" if result else ""
            raise RestoreFailed(f"{exc}{done}") from None
    return result


def _restore_collection(source: Path, name: str, entry: dict[str, Any], replace: bool) -> dict[str, Any]:
    """One collection of the backup, through its temporary collection (see :func:`restore`)."""
    from pymilvus import Collection, CollectionSchema, utility

    staging = name + RESTORE_SUFFIX
    # Milvus assigns an auto_id primary key itself and refuses one given: those ids are new.
    generated = [f["name"] for f in entry["schema"]["fields"]
                 if f.get("is_primary") and (f.get("auto_id") or entry["schema"].get("auto_id"))]
    step = f"dropping the {staging} an earlier restore left"
    try:
        if utility.has_collection(staging):  # a restore killed midway left it: never the app's data
            utility.drop_collection(staging)
        step = "creating it"
        schema = CollectionSchema.construct_from_dict(entry["schema"])
        collection = Collection(staging, schema=schema, consistency_level="Strong")
        step = "inserting its rows"
        batch: list[dict] = []
        with (source / entry["file"]).open() as f:
            for line in f:
                row = json.loads(line)
                for key in generated:
                    row.pop(key, None)
                batch.append(row)
                if len(batch) == BATCH:
                    collection.insert(batch)
                    batch = []
        if batch:
            collection.insert(batch)
        step = "flushing"
        collection.flush()
        step = "building its indexes"
        for index in entry["indexes"]:
            collection.create_index(index["field"], index["params"], index_name=index["name"])
        step = "loading it"
        collection.load()
        step = "counting its rows"
        rows = count_rows(collection)
        if rows != entry["rows"]:
            raise ValueError(f"{rows} rows, {entry['rows']} in the backup")
        step = f"counting the rows {name} holds now"
        held = rows_held(Collection(name)) if not replace and utility.has_collection(name) else 0
    except Exception as exc:
        _drop_quietly(staging)
        raise RestoreFailed(f"restore of {name} failed while {step} (in {staging}, now dropped): {exc}; "
                            f"{name} is as it was") from None
    if held:
        _drop_quietly(staging)
        raise RestoreFailed(f"restore of {name} refused: it holds {held} rows now (none at the check before the "
                            f"restore: written since); restore --replace replaces it; {name} is as it was")
    replaced = False
    try:
        if utility.has_collection(name):
            utility.drop_collection(name)
            replaced = True
    except Exception as exc:
        _drop_quietly(staging)
        raise RestoreFailed(f"restore of {name} failed while dropping the collection it replaces: {exc}; "
                            f"the restored copy {staging} was dropped") from None
    try:
        utility.rename_collection(staging, name)
    except Exception as exc:
        raise RestoreFailed(f"restore of {name}: its rows are restored in {staging}, but renaming it to {name}"
                            f"{' (the old one dropped)' if replaced else ''} failed: {exc}; rename it with "
                            "pymilvus's utility.rename_collection, or restore again") from None
    collection = Collection(name)
    collection.load()  # it was loaded under its temporary name: a no-op, or a wait for the reload
    return {"rows": count_rows(collection), "expected": entry["rows"], "ids_renewed": bool(generated)}


def _drop_quietly(name: str) -> None:
    """Drop a restore's temporary collection; a failure is not the error to report (the next restore drops it)."""
    from pymilvus import utility

    with contextlib.suppress(Exception):
        utility.drop_collection(name)


def counts() -> dict[str, int]:
    """Rows per collection of the connected Milvus (a rollout compares them with its backup's)."""
    from pymilvus import Collection

    out = {}
    for name in collections():
        collection = Collection(name)
        was_loaded = opened(collection)
        out[name] = count_rows(collection)
        if not was_loaded:
            collection.release()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpufleet.milvus_dump")
    parser.add_argument("action", choices=["export", "restore", "counts"])
    parser.add_argument("--uri", required=True)
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--replace", action="store_true")
    args = parser.parse_args(argv)
    # Credentials come from the environment, never the command line (ps shows it).
    _connect(args.uri, os.environ.get("MILVUS_USER") or None, os.environ.get("MILVUS_PASSWORD") or None)
    if args.action == "export":
        manifest = export(args.dir)
        print(json.dumps({name: c["rows"] for name, c in manifest["collections"].items()}))
        fd = os.open(args.dir / "manifest.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:  # last: a backup without its manifest is not a backup
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        sync_dir(args.dir)  # the files' names: the data of each was synced as it was written
    elif args.action == "restore":
        print(json.dumps(restore(args.dir, args.replace)))
    else:
        print(json.dumps(counts()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
