"""The repository key is installed only when its fingerprint is the pin (real gpg, real sh, file:// URLs)."""

import shutil
import subprocess

import pytest

from operations.pinned_apt import fetch_key_command
from operations.facts.apt import KeyringFingerprints

pytestmark = pytest.mark.skipif(shutil.which("gpg") is None or shutil.which("curl") is None,
                                reason="needs gpg and curl (Debian: gnupg, curl)")


def make_key(home, uid):
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--batch", "--homedir", str(home)]
    subprocess.run([*gpg, "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never"],
                   check=True, capture_output=True)
    armored = subprocess.run([*gpg, "--armor", "--export"], check=True, capture_output=True).stdout
    listing = subprocess.run([*gpg, "--with-colons", "--list-keys"], check=True, capture_output=True, text=True).stdout
    fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr"))
    # Key generation started a gpg-agent for this home: stop it, or it outlives the test run.
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False, capture_output=True)
    return armored, fingerprint


def fingerprints(path):
    out = subprocess.run(["sh", "-c", KeyringFingerprints().command(str(path))], capture_output=True, text=True)
    return KeyringFingerprints().process(out.stdout.splitlines())


def test_the_pinned_key_is_installed_and_another_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("GNUPGHOME", str(tmp_path / "reader"))
    (tmp_path / "reader").mkdir(mode=0o700)
    good, good_fpr = make_key(tmp_path / "good", "repo <good@example.invalid>")
    bad, _ = make_key(tmp_path / "bad", "swapped <bad@example.invalid>")
    (tmp_path / "good.pub").write_bytes(good)
    (tmp_path / "bad.pub").write_bytes(bad)
    keyring = tmp_path / "keyrings" / "repo.gpg"
    command = fetch_key_command(f"file://{tmp_path}/good.pub", good_fpr, str(keyring))
    # The command makes /etc/apt/keyrings; here only the keyring's own directory matters.
    command = command.replace("install -d -m 0755 /etc/apt/keyrings", f"install -d -m 0755 {keyring.parent}")
    assert subprocess.run(["sh", "-c", command], capture_output=True, text=True).returncode == 0
    assert fingerprints(keyring) == [good_fpr]
    assert oct(keyring.stat().st_mode & 0o777) == "0o644"

    swapped = fetch_key_command(f"file://{tmp_path}/bad.pub", good_fpr, str(keyring)).replace(
        "install -d -m 0755 /etc/apt/keyrings", f"install -d -m 0755 {keyring.parent}")
    refused = subprocess.run(["sh", "-c", swapped], capture_output=True, text=True)
    assert refused.returncode == 1
    assert f"expected {good_fpr}" in refused.stderr and "unchanged" in refused.stderr
    assert fingerprints(keyring) == [good_fpr]  # the keyring in place was not touched
    assert sorted(p.name for p in keyring.parent.iterdir()) == ["repo.gpg"]  # no temp left behind


def test_a_missing_keyring_has_no_fingerprint(tmp_path):
    assert fingerprints(tmp_path / "nothing.gpg") == []


def test_a_refused_key_names_its_url_without_running_it(tmp_path, monkeypatch):
    # The URL goes into the refusal's message: shown as it is, never run as shell.
    monkeypatch.setenv("GNUPGHOME", str(tmp_path / "reader"))
    (tmp_path / "reader").mkdir(mode=0o700)
    _, good_fpr = make_key(tmp_path / "good", "repo <good@example.invalid>")
    bad, _ = make_key(tmp_path / "bad", "swapped <bad@example.invalid>")
    (tmp_path / "bad.pub").write_bytes(bad)
    keyring = tmp_path / "keyrings" / "repo.gpg"
    url = f"file://{tmp_path}/bad.pub?$(id>pwned1)`id>pwned2`"  # curl fetches the file, the query is ignored
    command = fetch_key_command(url, good_fpr, str(keyring)).replace(
        "install -d -m 0755 /etc/apt/keyrings", f"install -d -m 0755 {keyring.parent}")
    refused = subprocess.run(["sh", "-c", command], capture_output=True, text=True, cwd=tmp_path)
    assert refused.returncode == 1
    assert f"the key at {url} has fingerprint" in refused.stderr
    assert not (tmp_path / "pwned1").exists() and not (tmp_path / "pwned2").exists()
