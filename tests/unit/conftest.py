"""Unit tests run with a home of their own: the production inventory's control-side Milvus secret
files (group_data/all.py: ~/.config/gpufleet/milvus-*-password) exist there, with random values,
so inventory/prod.py validates as it does on a control host set up as the README says."""

import secrets

import pytest


@pytest.fixture(scope="session", autouse=True)
def _home_with_milvus_secrets(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    config = home / ".config" / "gpufleet"
    config.mkdir(parents=True)
    for name in ("milvus-root-password", "milvus-app-password"):
        (config / name).write_text(secrets.token_hex(16) + "\n")
        (config / name).chmod(0o600)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))
        yield home
