#!/usr/bin/env python3
"""gpufleet: stage a Hugging Face model into the cache, verify every file, write the staged marker.

Run by operations/weights.py inside the node's vLLM image (which has huggingface_hub), with the
node's cache mounted at $HF_HOME:

    python3 stage_hub_weights.py --model Qwen/Qwen3-32B-AWQ --revision <40 hex>

The hub cache names each blob by its hash: LFS files (the weights) by their sha256, the other
files by git's blob sha1. Every file of the snapshot is hashed and compared with that name, so a
download cut short, a corrupted disk or a mirror that served other bytes is refused before any
replica loads it. Only then is ``.gpufleet-staged.json`` written into the snapshot directory
(its file and byte counts let the deploy see a file removed or truncated later without hashing).
Exit 1 with the reason on any failure; the marker is never written then.

``verify_snapshot`` takes a directory and needs no network: tests build a cache by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

MARKER = ".gpufleet-staged.json"
MANIFEST = ".gpufleet-manifest.sha256"
CHUNK = 8 * 1024 * 1024


class NotVerified(Exception):
    """A file of the snapshot does not match the hash its blob is named by."""


def _hash(path: Path, algorithm: str, prefix: bytes = b"") -> str:
    h = hashlib.new(algorithm)
    h.update(prefix)
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def bad_files(snapshot: Path) -> tuple[int, int, list[tuple[Path, str]]]:
    """Hash every file of a cache snapshot and compare with its blob's name:
    ``(files, bytes, [(link, why) for each that does not match])``."""
    files = total = 0
    bad: list[tuple[Path, str]] = []
    for link in sorted(snapshot.rglob("*")):
        if link.name.startswith(MARKER) or link.name == MANIFEST or link.is_dir():
            continue
        blob = link.resolve()
        if not blob.is_file():
            bad.append((link, f"its blob {blob} is missing"))
            continue
        name, size = blob.name, blob.stat().st_size
        if len(name) == 64:  # an LFS file: its sha256
            got = _hash(blob, "sha256")
        elif len(name) == 40:  # a git file: sha1 of "blob <size>\0" + content
            got = _hash(blob, "sha1", f"blob {size}\0".encode())
        else:
            bad.append((link, f"blob {name} is named by no hash this script knows"))
            continue
        if got != name:
            bad.append((link, f"content hashes to {got}, its blob is named {name}"))
            continue
        files += 1
        total += size
    return files, total, bad


def verify_snapshot(snapshot: Path) -> tuple[int, int]:
    """Check every file of a cache snapshot against its blob's name; return (files, bytes)."""
    files, total, bad = bad_files(snapshot)
    if bad or files == 0:
        raise NotVerified(_problem(snapshot, bad))
    return files, total


def _problem(snapshot: Path, bad: list[tuple[Path, str]]) -> str:
    if not bad:
        return f"{snapshot}: no files"
    link, why = bad[0]
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    return f"{link.relative_to(snapshot)}: {why}{more}"


def forget(bad: list[tuple[Path, str]]) -> None:
    """Remove the bad files' blobs and snapshot links, so the next download fetches them again
    (huggingface_hub trusts a blob that exists, whatever its bytes)."""
    for link, _ in bad:
        blob = link.resolve()
        if blob.is_file() and blob.parent.name == "blobs":
            blob.unlink()
        link.unlink(missing_ok=True)


def write_marker(snapshot: Path, model: str, revision: str, files: int, size: int) -> None:
    tmp = snapshot / f"{MARKER}.tmp"
    tmp.write_text(json.dumps({"source": "hub", "model": model, "revision": revision, "files": files,
                               "bytes": size}) + "\n")
    os.replace(tmp, snapshot / MARKER)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--model", required=True)
    parser.add_argument("--revision", default=None)
    args = parser.parse_args(argv)
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(repo_id=args.model, revision=args.revision))
        for stale in path.glob(f"{MARKER}*"):  # a marker from before, or one cut short
            stale.unlink()
        # Each pass hashes every file once (tens of GB): the second only after a re-download.
        files, size, bad = bad_files(path)
        if bad:  # damaged since the last staging (or a download cut short): fetch those once more
            print(f"gpufleet: {len(bad)} file(s) of {args.model} do not match their hashes: downloading them again",
                  file=sys.stderr)
            forget(bad)
            path = Path(snapshot_download(repo_id=args.model, revision=args.revision))
            files, size, bad = bad_files(path)
        if bad or files == 0:
            raise NotVerified(_problem(path, bad))
    except NotVerified as exc:
        print(f"gpufleet: {args.model}: {exc}: refused, not staged", file=sys.stderr)
        return 1
    except Exception as exc:  # the hub's errors: no such repository/revision, no token, no network
        print(f"gpufleet: {args.model}@{args.revision or 'main'}: download failed: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1
    write_marker(path, args.model, path.name, files, size)
    print(f"staged {args.model}@{path.name}: {files} files, {size} bytes, each checked against its blob's hash")
    return 0


if __name__ == "__main__":
    sys.exit(main())
