"""Distribution packages at a security floor: the version policy, apt's reading of the pin, and drift's fact."""

import shutil
import subprocess
from pathlib import Path

import pytest
from debian.debian_support import Version

from operations.distro_packages import accepts, behind, preferences_text, series
from operations.facts.apt import AptCandidates

FIXTURES = Path(__file__).parent.parent / "fixtures" / "apt"


@pytest.mark.parametrize(
    ("floor", "installed", "ok"),
    [
        ("1.22.1-9+deb12u11", "1.22.1-9+deb12u11", True),
        ("1.22.1-9+deb12u11", "1.22.1-9+deb12u12", True),  # the security build that broke the exact pin
        ("1.22.1-9+deb12u11", "1.22.1-9+deb12u9", False),  # bookworm's point release, below the floor
        ("1.22.1-9+deb12u11", "1.24.0-2~bpo12+1", False),  # backports: another upstream version
        ("1.22.1-9+deb12u11", None, False),
        ("20.10.24+dfsg1-1+deb12u1+b6", "20.10.24+dfsg1-1+deb12u2", True),
        ("20.10.24+dfsg1-1+deb12u1+b6", "20.10.24+dfsg1-1+deb12u1", False),  # binNMU +b6 sorts after
        ("1:2.3-4", "2.3-5", False),  # another epoch is another version line
    ],
)
def test_floor_accepts_newer_builds_of_the_same_upstream_only(floor, installed, ok):
    assert accepts(floor, installed) is ok


def test_series_is_the_upstream_version_with_any_revision():
    assert series("1.22.1-9+deb12u11") == "1.22.1-*"
    assert series("20.10.24+dfsg1-1+deb12u1+b6") == "20.10.24+dfsg1-*"
    assert series("1:2.3-4") == "1:2.3-*"


def test_behind_means_the_archive_has_a_newer_build():
    assert behind("1.22.1-9+deb12u11", "1.22.1-9+deb12u12")
    assert not behind("1.22.1-9+deb12u12", "1.22.1-9+deb12u12")
    assert not behind(None, "1.22.1-9+deb12u12") and not behind("1.22.1-9+deb12u12", None)


def test_candidates_fact_parses_real_apt_cache_policy():
    lines = (FIXTURES / "apt-cache-policy-bookworm-2026-12-04.txt").read_text().splitlines()
    found = AptCandidates().process(lines)
    assert found["nginx"] == {"installed": None, "candidate": "1.22.1-9+deb12u12"}
    assert found["docker.io"]["installed"] == found["docker.io"]["candidate"] == "20.10.24+dfsg1-1+deb12u1+b6"
    assert set(found) == {"nginx", "docker.io", "prometheus"}


def _apt_policy_with(prefs_dir: Path, package: str) -> dict:
    out = subprocess.run(
        ["apt-cache", "-o", f"Dir::Etc::PreferencesParts={prefs_dir}", "-o", "Dir::Etc::Preferences=/dev/null",
         "policy", package], capture_output=True, text=True, check=True, env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"})
    return AptCandidates().process(out.stdout.splitlines())[package]


def test_real_apt_takes_the_newest_build_of_the_pinned_upstream(tmp_path):
    """apt itself reads the preferences we write: the candidate is a build of the floor's upstream."""
    assert shutil.which("apt-cache"), "apt-cache (Debian's apt) is needed: the project's CI runs on Debian 12"
    versions = subprocess.run(["apt-cache", "madison", "nginx"], capture_output=True, text=True).stdout
    assert "1.22.1-" in versions, f"this machine's apt lists carry no nginx 1.22.1 build (run apt-get update): {versions!r}"
    (tmp_path / "gpufleet-lb").write_text(preferences_text({"nginx": "1.22.1-9+deb12u1"}))
    candidate = _apt_policy_with(tmp_path, "nginx")["candidate"]
    newest = max((line.split("|")[1].strip() for line in versions.splitlines() if "1.22.1-" in line),
                 key=Version)
    assert candidate == newest and accepts("1.22.1-9+deb12u1", candidate)
