"""AptCandidates with a kept answer (operations/apt_states.py): apt-cache runs again exactly when
one of apt's inputs changed. Run for real with sh, find and md5sum; apt-cache is a stand-in that
counts its runs and prints what the real one prints (tests/fixtures' capture)."""

from __future__ import annotations

import os
import stat
import subprocess
import time

import pytest

from operations import apt_states
from operations.facts.apt import AptCandidates

POLICY = """nginx:
  Installed: 1.22.1-9+deb12u11
  Candidate: 1.22.1-9+deb12u12
  Version table:
"""


@pytest.fixture
def apt(tmp_path, monkeypatch):
    """apt's inputs in tmp_path, and an apt-cache that counts its runs."""
    etc, lists, dpkg = tmp_path / "etc-apt", tmp_path / "lists", tmp_path / "dpkg"
    for d in (etc / "preferences.d", lists, dpkg):
        d.mkdir(parents=True)
    (etc / "sources.list").write_text("deb http://deb.debian.org/debian bookworm main\n")
    (lists / "bookworm_main_Packages").write_text("Package: nginx\n")
    (dpkg / "status").write_text("Package: nginx\n")
    monkeypatch.setattr(AptCandidates, "INPUTS", (str(etc), str(lists), str(dpkg / "status"), str(dpkg / "arch")))
    bin_dir, runs = tmp_path / "bin", tmp_path / "apt-cache-runs"
    bin_dir.mkdir()
    stand_in = bin_dir / "apt-cache"
    stand_in.write_text(f"#!/bin/sh\necho run >> {runs}\ncat <<'EOF'\n{POLICY}EOF\n")
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")

    def read(packages=("nginx",), known=None):
        fact = AptCandidates()
        out = subprocess.run(["sh", "-c", fact.command(list(packages), known)], capture_output=True, text=True,
                             check=True).stdout.splitlines()
        return fact.process(out)

    def apt_cache_runs():
        return len(runs.read_text().splitlines()) if runs.exists() else 0

    return etc, lists, read, apt_cache_runs


def _kept(found, packages=("nginx",)):
    return {"state": found["state"], "packages": sorted(packages), "candidates": found["candidates"]}


def test_unchanged_inputs_answer_the_kept_candidates_without_apt_cache(apt):
    etc, lists, read, apt_cache_runs = apt
    first = read()
    assert first["candidates"] == {"nginx": {"installed": "1.22.1-9+deb12u11", "candidate": "1.22.1-9+deb12u12"}}
    assert first["state"] and apt_cache_runs() == 1
    assert read(known=_kept(first)) == first
    assert apt_cache_runs() == 1


@pytest.mark.parametrize("change", ["new list", "list rewritten", "pin added", "touched", "other packages"])
def test_any_change_to_apts_inputs_runs_apt_cache_again(apt, change):
    etc, lists, read, apt_cache_runs = apt
    first = read()
    known = _kept(first)
    packages = ("nginx",)
    if change == "new list":
        (lists / "bookworm-security_main_Packages").write_text("Package: nginx\n")
    elif change == "list rewritten":  # apt-get update: a new file renamed over the old one
        new = lists / "tmp"
        new.write_text("Package: nginx\nVersion: 2\n")
        new.rename(lists / "bookworm_main_Packages")
    elif change == "pin added":
        (etc / "preferences.d" / "nginx").write_text("Package: nginx\nPin: version 1.22.1-9+deb12u11\n")
    elif change == "touched":
        later = time.time() + 5
        os.utime(etc / "sources.list", (later, later))
    else:
        packages = ("nginx", "prometheus")
    again = read(packages, known=known)
    assert apt_cache_runs() == 2
    assert again["state"] != first["state"] or change == "other packages"


def test_no_fingerprint_no_kept_answer(apt, monkeypatch):
    etc, lists, read, apt_cache_runs = apt
    monkeypatch.setattr(AptCandidates, "INPUTS", ("/nonexistent/apt",))
    found = read()
    assert found["state"] is None and apt_cache_runs() == 1
    assert read(known={"state": "", "packages": ["nginx"], "candidates": {}})["candidates"] != {}
    assert apt_cache_runs() == 2


def test_the_kept_answer_is_written_0600_and_read_back_per_host(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUFLEET_CACHE_DIR", str(tmp_path))
    assert apt_states.known("lb-1") is None
    found = {"state": "abc", "candidates": {"nginx": {"installed": "1", "candidate": "2"}}}
    apt_states.remember("lb-1", ["nginx"], found)
    assert apt_states.known("lb-1") == {"state": "abc", "packages": ["nginx"], "candidates": found["candidates"]}
    assert stat.S_IMODE(apt_states.cache_file("lb-1").stat().st_mode) == 0o600
    assert apt_states.known("gpu-node-1") is None
    apt_states.remember("lb-1", ["nginx"], {"state": None, "candidates": {}})  # no fingerprint: kept as it was
    assert apt_states.known("lb-1")["state"] == "abc"
    apt_states.cache_file("lb-1").write_text("{not json")
    assert apt_states.known("lb-1") is None
    assert AptCandidates.prefetch_kwargs("lb-1", {"packages": ["nginx"]}) == {"packages": ["nginx"], "known": None}
