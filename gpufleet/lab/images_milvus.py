"""The lab's stand-in for milvusdb/milvus: PyPI's packaged Milvus standalone server on the base image.

No public registry is reachable from the lab, and milvusdb/milvus cannot be pulled. PyPI's
``milvus==2.3.5`` is the real Milvus standalone binary with embedded etcd and local storage (what
Milvus's ``standalone_embed.sh`` runs): gRPC and REST on 19530, ``/healthz`` and ``/metrics`` on
9091 (LAB.md "Milvus"). group_data/lab.py runs it in ``milvus_mode = "embedded"``.

The image takes the real image's command (``milvus run standalone``) and ignores it, so
operations/milvus.py passes identical arguments in production and in the lab
(lab/images/milvus/lab-milvus).

Authentication works as with the real image: the Milvus 2.3.5 binary reads
``COMMON_SECURITY_AUTHORIZATIONENABLED`` (operations/milvus.py) from its environment itself
(Milvus's config takes ``A_B_C`` for ``a.b.c``, and milvus-server passes its environment on; checked
with a container of this image and pymilvus: anonymous and wrong-password logins are refused), so
lab-milvus maps nothing. ``COMMON_SECURITY_DEFAULTROOTPASSWORD`` (``defaultRootPassword``, Milvus
>= 2.4) does not exist in 2.3.5: root starts with Milvus's default password, and the deploy's users
step (operations/milvus_users.py) replaces it with the secret, as for any Milvus older than that
setting. Nothing in the image changes for it (no rebuild).

Python packages come from a wheelhouse downloaded on this machine (``pip download``, which also
reads PIP_FIND_LINKS) into lab/.cache/ and are installed offline inside the image: HTTPS from inside
containers fails certificate checks here, and an air-gapped site works the same way.

Images are tagged with a digest of their inputs (Dockerfile, scripts, wheel names and sizes): an
unchanged input reuses the cached image.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from gpufleet.lab.progress import say, step
from gpufleet.lab.topology import LAB_DIR

CACHE_DIR = LAB_DIR / ".cache"  # git-ignored
IMAGES_DIR = LAB_DIR / "images"
PYTHON_VERSION = "3.11"  # Debian 12's python3, the base image's interpreter

MILVUS_REQUIREMENTS = ["milvus[client]==2.3.5", "setuptools<81", "marshmallow<4", "numpy"]
MILVUS_REPO = "gpufleet-lab/milvus-local"
MILVUS_NAME = "gpufleet-lab/milvus:2.3.5"  # in the lab registry; group_data/lab.py milvus_image


def wheelhouse(name: str, requirements: list[str]) -> Path:
    """lab/.cache/<name>: wheels for ``requirements`` (CPython 3.11, manylinux x86_64).

    Downloaded once; a stamp file records the requirements so that a changed list downloads again.
    """
    target = CACHE_DIR / name
    stamp = target / ".requirements"
    wanted = "\n".join(requirements) + "\n"
    if stamp.exists() and stamp.read_text() == wanted and any(target.glob("*.whl")):
        return target
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    with step(f"download wheelhouse {name}"):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--dest", str(target),
             "--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp",
             "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
             "--platform", "manylinux2014_x86_64", *requirements],
            check=True, env={**os.environ, "PIP_REQUIRE_VIRTUALENV": "0"},
        )
    stamp.write_text(wanted)
    return target


def input_digest(*paths: Path, extra: str = "") -> str:
    """Digest of files (by name and content; wheels by name and size, they are large and immutable)."""
    h = hashlib.sha256(extra.encode())
    for root in paths:
        files = [root] if root.is_file() else sorted(
            p for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")  # as build_image copies
        for f in files:
            h.update(f.name.encode())
            h.update(str(f.stat().st_size).encode() if f.suffix == ".whl" else f.read_bytes())
            h.update(str(f.stat().st_mode & 0o111).encode())
    return h.hexdigest()[:12]


def build_image(client, tag: str, source: Path, wheels: Path, base_image: str) -> None:
    """docker build of ``source`` (its Dockerfile) with ``wheels`` copied in as ./wheels."""
    with tempfile.TemporaryDirectory(prefix="gpufleet-lab-build-") as tmp:
        context = Path(tmp) / "context"
        shutil.copytree(source, context, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (context / "wheels").mkdir()
        for wheel in wheels.glob("*.whl"):
            try:
                os.link(wheel, context / "wheels" / wheel.name)
            except OSError:
                shutil.copy(wheel, context / "wheels" / wheel.name)
        client.images.build(path=str(context), tag=tag, rm=True, network_mode="bridge",
                            buildargs={"BASE": base_image}, labels={"io.gpufleet.lab.inputs": tag.rsplit(":", 1)[1]})


def cached(client, tag: str) -> bool:
    import docker

    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def milvus_tag(base_image: str) -> tuple[str, Path]:
    wheels = wheelhouse("wheels-milvus", MILVUS_REQUIREMENTS)
    source = IMAGES_DIR / "milvus"
    return f"{MILVUS_REPO}:{input_digest(source, wheels, extra=base_image)}", wheels


def build(client, base_image: str) -> list[tuple[str, str]]:
    tag, wheels = milvus_tag(base_image)
    if cached(client, tag):
        say(f"milvus image {tag} cached")
    else:
        with step(f"build {tag} (Milvus 2.3.5 standalone from PyPI)"):
            build_image(client, tag, IMAGES_DIR / "milvus", wheels, base_image)
    return [(tag, MILVUS_NAME)]
