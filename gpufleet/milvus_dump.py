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
kept), which takes time on a large collection; rows are JSON lines (vectors as float lists), about
3x the size of Milvus's own segments. Kept: the default database's collections, their schema
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
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

FORMAT = 1
BATCH = 1000


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
    rows = collection.query(expr="", output_fields=["count(*)"], consistency_level="Strong")
    return int(rows[0]["count(*)"])


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export(out: Path) -> dict[str, Any]:
    """Write every collection of the connected Milvus into ``out``; return the manifest."""
    from pymilvus import Collection, utility

    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    manifest: dict[str, Any] = {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                "collections": {}}
    for name in sorted(utility.list_collections()):
        collection = Collection(name)
        was_loaded = opened(collection)
        path = out / f"{name}.jsonl"
        written = 0
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            iterator = collection.query_iterator(batch_size=BATCH, expr="", output_fields=["*"],
                                                 consistency_level="Strong")
            while True:
                batch = iterator.next()
                if not batch:
                    break
                for row in batch:
                    f.write(json.dumps(_jsonable(dict(row)), sort_keys=True) + "\n")
                    written += 1
            iterator.close()
        manifest["collections"][name] = {
            "rows": written, "file": path.name, "sha256": sha256_file(path),
            "schema": collection.schema.to_dict(),
            "indexes": [{"field": i.field_name, "name": i.index_name, "params": _jsonable(i.params)}
                        for i in collection.indexes],
        }
        if not was_loaded:  # as it was: a released collection holds no memory
            collection.release()
    return manifest


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


def restore(source: Path, replace: bool = False) -> dict[str, Any]:
    """Recreate every collection of the backup in the connected Milvus; return what each holds now.

    Nothing is written unless every file matches the manifest, and no collection that exists with
    rows is touched unless ``replace`` (then it is dropped first).
    """
    from pymilvus import Collection, CollectionSchema, utility

    manifest = json.loads((source / "manifest.json").read_text())
    if manifest.get("format") != FORMAT:
        raise SystemExit(f"{source}: backup format {manifest.get('format')!r}, this gpufleet reads {FORMAT}")
    problems = verify_files(source, manifest)
    existing = set(utility.list_collections())
    for name in manifest["collections"]:
        if name in existing and not replace:
            rows = Collection(name).num_entities  # no load needed (counts deleted rows not compacted yet)
            if rows:
                problems.append(f"{name}: exists with {rows} rows (restore --replace drops it first)")
    if problems:
        raise SystemExit("restore refused, nothing changed:\n  " + "\n  ".join(problems))
    result = {}
    for name, entry in manifest["collections"].items():
        if name in existing:
            utility.drop_collection(name)
        schema = CollectionSchema.construct_from_dict(entry["schema"])
        collection = Collection(name, schema=schema, consistency_level="Strong")
        # Milvus assigns an auto_id primary key itself and refuses one given: those ids are new.
        generated = [f["name"] for f in entry["schema"]["fields"]
                     if f.get("is_primary") and (f.get("auto_id") or entry["schema"].get("auto_id"))]
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
        collection.flush()
        for index in entry["indexes"]:
            collection.create_index(index["field"], index["params"], index_name=index["name"])
        collection.load()
        result[name] = {"rows": count_rows(collection), "expected": entry["rows"], "ids_renewed": bool(generated)}
    return result


def counts() -> dict[str, int]:
    """Rows per collection of the connected Milvus (a rollout compares them with its backup's)."""
    from pymilvus import Collection, utility

    out = {}
    for name in sorted(utility.list_collections()):
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
    elif args.action == "restore":
        print(json.dumps(restore(args.dir, args.replace)))
    else:
        print(json.dumps(counts()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
