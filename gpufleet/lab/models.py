"""The lab's model archive, served by its repository as production's internal model mirror.

lab/models/qwen3-tiny/ is the tiny Qwen3 the lab serves (made once by
lab/models/make_tiny_model.py; committed, 368 KB, so that every machine serves the same bytes).
`lab up` publishes it as ``http://lab-repo/models/qwen3-tiny.tar``, a tar written the same way
every time (sorted names, no owners, mtime 0): its sha256 is a constant, pinned in
group_data/lab.py as ``vllm_model_sha256``, and the nodes stage it exactly as a production node
stages an archive from an internal mirror (operations/weights.py, ``vllm_model_source = "url"``).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from gpufleet.lab.topology import LAB_DIR, REPO_DIR

MODEL_DIR = LAB_DIR / "models" / "qwen3-tiny"
PUBLISHED = "models/qwen3-tiny.tar"  # under the repository root: http://lab-repo/models/qwen3-tiny.tar


def archive_bytes(model_dir: Path = MODEL_DIR) -> bytes:
    """The model directory as a reproducible tar: ``qwen3-tiny/<file>``, sorted, root-owned, mtime 0."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        top = tarfile.TarInfo(model_dir.name)
        top.type, top.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(top)
        for path in sorted(p for p in model_dir.iterdir() if p.is_file()):
            info = tarfile.TarInfo(f"{model_dir.name}/{path.name}")
            data = path.read_bytes()
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def publish(repo_dir: Path = REPO_DIR) -> str:
    """Write the archive into the repository (idempotent); return its sha256."""
    data = archive_bytes()
    target = repo_dir / PUBLISHED
    target.parent.mkdir(parents=True, exist_ok=True)
    if not (target.exists() and target.read_bytes() == data):
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
    return hashlib.sha256(data).hexdigest()
