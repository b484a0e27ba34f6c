"""The lab's model archive and the pin group_data/lab.py stages it by (gpufleet/lab/models.py)."""

import hashlib
import io
import runpy
import subprocess
import tarfile

import pytest

from gpufleet import PROJECT_ROOT
from gpufleet.lab import aptrepo, models


def test_the_pinned_sha256_is_the_archive_of_the_committed_model():
    """Changing a file of lab/models/qwen3-tiny without the pin (or the other way) fails here,
    not as a refused download in the middle of a lab deploy."""
    lab = runpy.run_path(str(PROJECT_ROOT / "group_data" / "lab.py"))
    assert lab["vllm_model_source"] == "url"
    assert hashlib.sha256(models.archive_bytes()).hexdigest() == lab["vllm_model_sha256"]


def test_the_archive_is_the_same_bytes_every_time_and_holds_the_model(tmp_path):
    first = models.archive_bytes()
    assert models.archive_bytes() == first
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        members = tar.getmembers()
    assert {m.name for m in members} >= {"qwen3-tiny/config.json", "qwen3-tiny/model.safetensors",
                                         "qwen3-tiny/tokenizer.json"}
    assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in members)
    sha = models.publish(tmp_path)
    assert (tmp_path / models.PUBLISHED).read_bytes() == first and sha == hashlib.sha256(first).hexdigest()


def test_the_kernel_archive_stands_in_for_this_kernels_headers_or_says_why_not(tmp_path, monkeypatch):
    monkeypatch.setattr(aptrepo, "REPO_DIR", tmp_path)
    out = aptrepo.build_kernel_archive("6.1.0-27-amd64")
    deb = next(out.glob("*.deb"))
    fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version"], capture_output=True, text=True,
                            check=True).stdout
    assert fields == "Package: linux-headers-6.1.0-27-amd64\nVersion: 1:0~gpufleet-lab\n"
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    assert "./lib/modules/6.1.0-27-amd64/build/README" in listing
    assert "Package: linux-headers-6.1.0-27-amd64" in (out / "Packages").read_text()
    with pytest.raises(ValueError, match="not a Debian package name"):
        aptrepo.build_kernel_archive("5.15.167.4-microsoft-standard-WSL2")
