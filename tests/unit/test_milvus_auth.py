"""Milvus authentication's data (issue 12): on unless written off, secrets checked on the Milvus host only."""

from __future__ import annotations

import pytest

from gpufleet import PROJECT_ROOT
from gpufleet.fleet import load_fleet
from gpufleet.milvus_users import COLLECTION_GRANTS, GLOBAL_GRANTS, app_grants
from gpufleet.settings import SettingsError
from operations.milvus import AUTH_ENV, AUTH_ON, milvus_specs

PROD = str(PROJECT_ROOT / "inventory/prod.py")
APP = {"app_image": "registry.internal/rag-app:1.4.2"}


def test_production_runs_milvus_with_authentication_from_the_control_hosts_files():
    db = load_fleet(PROD, APP, cwd=str(PROJECT_ROOT)).vector_db
    assert db.settings.milvus_authentication is True
    assert db.settings.milvus_root_secret().endswith("milvus-root-password")
    assert db.settings.milvus_app_secret().endswith("milvus-app-password")


def test_missing_secret_files_are_errors_of_the_milvus_host_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # a control host where nobody made the files
    with pytest.raises(SettingsError) as refused:
        load_fleet(PROD, APP, cwd=str(PROJECT_ROOT))
    found = {(i.host, i.key) for i in refused.value.issues if i.severity == "error"}
    assert found == {("db-01", "milvus_root_password_file"), ("db-01", "milvus_app_password_file")}


def test_authentication_off_only_when_written_and_then_no_secret_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    db = load_fleet(PROD, {**APP, "milvus_authentication": False}, cwd=str(PROJECT_ROOT)).vector_db
    assert db.settings.milvus_root_secret() is None and db.settings.milvus_app_secret() is None


def test_milvus_with_authentication_gets_the_variable_and_the_root_only_env_file_never_a_value():
    for mode in ("standalone", "embedded"):
        milvus = milvus_specs(mode, "milvusdb/milvus:v2.6.11", "10.0.0.5", authentication=True)[-1]
        assert AUTH_ON.items() <= milvus.env.items()
        assert milvus.env_files[AUTH_ENV] == "root-password"  # a mark: a new password does not recreate it
        plain = milvus_specs(mode, "milvusdb/milvus:v2.6.11", "10.0.0.5")[-1]
        assert "COMMON_SECURITY_AUTHORIZATIONENABLED" not in plain.env and AUTH_ENV not in plain.env_files


def test_the_apps_role_can_work_its_collection_but_never_drop_or_manage_users():
    grants = app_grants(["gpufleet_docs"])
    assert ("Collection", "gpufleet_docs", "Search") in grants and ("Global", "*", "CreateCollection") in grants
    privileges = set(GLOBAL_GRANTS) | set(COLLECTION_GRANTS)
    assert not {p for p in privileges if p.startswith(("Drop", "Create", "Update", "Manage", "Operate"))
                if p not in ("CreateCollection", "CreateIndex")}
    assert "All" not in privileges and "DropCollection" not in privileges


def test_the_users_child_reads_its_uri_after_its_start_and_asks_nothing_without_one(monkeypatch, capsys):
    """`--uri -`: the deploy starts the child (Python and its Milvus client's imports) while it still
    reads Milvus's health and opens the tunnel, then writes the URI; no URI (not healthy) asks nothing."""
    import io

    from gpufleet import milvus_rpc, milvus_users

    asked = []
    # Not in this process: the stubs' loader would stand a bare pymilvus package in for later tests.
    monkeypatch.setattr(milvus_rpc, "stubs", lambda: None)
    monkeypatch.setattr(milvus_users, "_timeout", milvus_users._timeout)  # main() sets it: put it back
    monkeypatch.setattr(milvus_users, "read_password", lambda path: "secret")
    monkeypatch.setattr(milvus_users, "_plan_retrying", lambda uri, *rest, **kw: asked.append(uri) or [])
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert milvus_users.main(["check", "--uri", "-", "--root-password-file", "root"]) == 0
    assert asked == [] and capsys.readouterr().out == ""
    monkeypatch.setattr("sys.stdin", io.StringIO("http://127.0.0.1:40123\n"))
    assert milvus_users.main(["check", "--uri", "-", "--root-password-file", "root"]) == 0
    assert asked == ["http://127.0.0.1:40123"]
    assert capsys.readouterr().out.strip() == '{"changes": []}'


def test_a_users_child_that_got_no_uri_is_ended(tmp_path):
    """The check gives up (Milvus not healthy, a cancelled read): the started child, still waiting
    for its URI, is killed and reaped, not left running."""
    import signal

    from operations.milvus_users import _Child

    child = _Child("check", str(tmp_path / "root"), None, None, [])
    assert child.process.poll() is None  # waiting for its URI on stdin
    child.stop()
    assert child.process.returncode == -signal.SIGKILL
