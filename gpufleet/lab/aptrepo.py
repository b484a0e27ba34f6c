"""The lab's stand-in NVIDIA apt repository: real package names and versions, stand-in contents.

Laid out and signed like NVIDIA's CUDA repository (a flat repository with InRelease, served at
``compute/cuda/repos/<distro>/<arch>/``), so production's repository operation works unchanged
when ``apt_mirror`` points at the lab's server. Packages are built with dpkg-deb from
lab/standins/packages.toml; the index is written here (no dpkg-dev needed).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from email.utils import formatdate
from pathlib import Path

from gpufleet.lab.progress import step
from gpufleet.lab.topology import REPO_DIR, REPO_KEY_FINGERPRINT, STATE_DIR

STANDINS = Path(__file__).resolve().parents[2] / "lab" / "standins"
REPO_PATH = "compute/cuda/repos/debian12/x86_64"  # the same path as NVIDIA's CUDA repository
KEY_NAME = "gpufleet-lab.pub"  # NVIDIA's is 3bf863cc.pub; group_data/lab.py names this one
GNUPG_HOME = STATE_DIR / "gnupg"


def build_repository() -> Path:
    """Build (or rebuild, when lab/standins changed) the signed repository; return its root."""
    inputs = inputs_digest()
    out = REPO_DIR / REPO_PATH
    stamp = REPO_DIR / ".inputs"
    if stamp.exists() and stamp.read_text() == inputs and (out / "InRelease").exists():
        if not REPO_KEY_FINGERPRINT.exists():
            _write_fingerprint()
        return REPO_DIR
    with step("build the stand-in NVIDIA apt repository"):
        # Empty the directory in place: the repository container bind-mounts it, and a
        # directory removed and made anew would leave that mount pointing at the old one.
        REPO_DIR.mkdir(parents=True, exist_ok=True)
        for child in REPO_DIR.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        out.mkdir(parents=True)
        for spec in tomllib.loads((STANDINS / "packages.toml").read_text())["package"]:
            for version in spec["versions"]:
                _build_deb(spec, version, out)
        _write_index(out)
        _sign(out)
        stamp.write_text(inputs)
    return REPO_DIR


KERNEL_ARCHIVE = "kernel-archive"  # http://lab-repo/kernel-archive/: the distribution's headers, stand-in
HEADERS_VERSION = "1:0~gpufleet-lab"
DEBIAN_PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")  # Debian Policy 5.6.1  # the epoch puts it above any real build of the same name


def build_kernel_archive(release: str | None = None) -> Path:
    """A flat repository with a STAND-IN ``linux-headers-<release>`` for this machine's kernel.

    The lab's hosts run this machine's kernel, whose headers no archive the lab reaches carries
    for sure. On a real host the distribution's archive has them, and DKMS builds the driver's
    module against them (lab/standins/dkms-build fails without them). The package holds only
    ``/lib/modules/<release>/build/`` with a note; `lab up` adds this archive to each GPU node as a
    trusted source (the lab's own network), as a real host has its distribution's archive.
    """
    release = release or os.uname().release
    out = REPO_DIR / KERNEL_ARCHIVE
    name = f"linux-headers-{release}"
    if not DEBIAN_PACKAGE_NAME.fullmatch(name):
        raise ValueError(f"the hosts' kernel {release!r} gives {name!r}, which is not a Debian package name "
                         "(lowercase letters, digits, '+', '-', '.'): no archive can carry its headers, so the lab "
                         "cannot stand in for them on this machine")
    stamp = out / ".release"
    if stamp.exists() and stamp.read_text() == release and (out / "Release").exists():
        return out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        note = Path(tmp) / "README"
        note.write_text("STAND-IN (gpufleet lab): no kernel headers inside; DKMS's stand-in looks for this directory.\n")
        spec = {"name": name, "architecture": "amd64", "files": {f"/lib/modules/{release}/build/README": str(note)},
                "description": f"STAND-IN for the headers of kernel {release} (lab only)"}
        _build_deb(spec, HEADERS_VERSION, out)
    _write_index(out)
    stamp.write_text(release)
    return out


def inputs_digest() -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in STANDINS.rglob("*") if p.is_file()):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def _build_deb(spec: dict, version: str, out: Path) -> None:
    name = spec["name"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for dest, src in spec.get("files", {}).items():
            target = root / dest.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            source = STANDINS / src  # an absolute src (a file made on the fly) stays as it is
            shutil.copy(source, target)
            target.chmod(0o755 if os.access(source, os.X_OK) else 0o644)
        debian = root / "DEBIAN"
        debian.mkdir()
        control = [
            f"Package: {name}",
            f"Version: {version}",
            f"Architecture: {spec.get('architecture', 'all')}",
            "Maintainer: gpufleet lab <lab@gpufleet.invalid>",
            "Section: misc",
            "Priority: optional",
        ]
        depends = [f"{d} (= {version})" for d in spec.get("depends_same_version", [])]
        if depends:
            control.append(f"Depends: {', '.join(depends)}")
        control.append(f"Description: {spec['description']}")
        (debian / "control").write_text("\n".join(control) + "\n")
        for script in ("postinst", "prerm"):
            if script in spec:
                path = debian / script
                path.write_text(f"#!/bin/sh\nset -e\n{spec[script]}\n")
                path.chmod(0o755)
        filename = f"{name}_{version.replace(':', '%3a')}_{spec.get('architecture', 'all')}.deb"
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(out / filename)],
                       check=True, stdout=subprocess.DEVNULL)


def _write_index(out: Path) -> None:
    stanzas = []
    for deb in sorted(out.glob("*.deb")):
        control = subprocess.run(["dpkg-deb", "-f", str(deb)], check=True, capture_output=True, text=True).stdout
        data = deb.read_bytes()
        stanzas.append(
            control.rstrip("\n")
            + f"\nFilename: ./{deb.name}\nSize: {len(data)}\n"
            + f"MD5sum: {hashlib.md5(data).hexdigest()}\nSHA256: {hashlib.sha256(data).hexdigest()}\n"
        )
    packages = "\n".join(stanzas).encode()
    (out / "Packages").write_bytes(packages)
    (out / "Packages.gz").write_bytes(gzip.compress(packages, mtime=0))
    lines = [
        "Origin: gpufleet-lab",
        "Label: gpufleet lab stand-in NVIDIA repository",
        "Architectures: amd64 all",
        f"Date: {formatdate(usegmt=True)}",
    ]
    for field, algo in (("MD5Sum", hashlib.md5), ("SHA256", hashlib.sha256)):
        lines.append(f"{field}:")
        for index in ("Packages", "Packages.gz"):
            data = (out / index).read_bytes()
            lines.append(f" {algo(data).hexdigest()} {len(data):>8} {index}")
    (out / "Release").write_text("\n".join(lines) + "\n")


def _gpg(*args: str, **kwargs) -> subprocess.CompletedProcess:
    GNUPG_HOME.mkdir(parents=True, exist_ok=True, mode=0o700)
    return subprocess.run(["gpg", "--batch", "--homedir", str(GNUPG_HOME), *args], check=True,
                          capture_output=True, **kwargs)


def _sign(out: Path) -> None:
    if not _gpg("--list-secret-keys").stdout.strip():
        _gpg("--passphrase", "", "--quick-gen-key", "gpufleet lab repository <lab@gpufleet.invalid>",
             "ed25519", "sign", "never")
    (out / KEY_NAME).write_bytes(_gpg("--armor", "--export").stdout)
    _write_fingerprint()
    _gpg("--yes", "--clearsign", "-o", str(out / "InRelease"), str(out / "Release"))
    _gpg("--yes", "-abs", "-o", str(out / "Release.gpg"), str(out / "Release"))


def _write_fingerprint() -> None:
    """The signing key's fingerprint, for inventory/lab.py's host data (the deploy pins it)."""
    listing = _gpg("--with-colons", "--list-keys", text=True).stdout
    fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr"))
    REPO_KEY_FINGERPRINT.write_text(fingerprint + "\n")
