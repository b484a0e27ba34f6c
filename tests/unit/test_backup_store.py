"""gpufleet/backup_store.py against a real S3 server (``rclone serve s3`` on 127.0.0.1:
tests/s3_server.py): layout, whole-only-with-a-manifest, retention, failures, credentials; and
the drift findings read from a bucket. The Milvus round trip through a bucket is in the lab
(tests/lab/test_data_tier.py)."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import pytest
from boto3.exceptions import S3UploadFailedError

from gpufleet import data_backup
from gpufleet.backup_store import LocalStore, S3Access, S3Store, StoreError, open_store, read_credentials
from gpufleet.data_drift import findings
from gpufleet.host_reads import NotChecked
from gpufleet.milvus_dump import sha256_file, verify_files
from tests.s3_server import s3_server

NOW = datetime.datetime(2026, 12, 5, 12, 0, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("s3")) as s3:
        yield s3


@pytest.fixture
def bucket(server, request):
    name = "b-" + request.node.name.lower().replace("_", "-")[-50:].strip("-")
    server.make_bucket(name)
    return name


@pytest.fixture(autouse=True)
def _staging(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUFLEET_STATE_DIR", str(tmp_path / "state"))


def access(server) -> S3Access:
    return S3Access(endpoint=server.endpoint, credentials_file=str(server.credentials_file))


def export_into(directory, rows: int, created: str = "2026-12-05T02:00:00Z") -> dict:
    """What gpufleet.milvus_dump's export leaves in a staging directory: data, then the manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "docs.jsonl").write_text("".join(json.dumps({"id": i, "text": f"doc {i}"}) + "\n" for i in range(rows)))
    manifest = {"format": 1, "created": created, "collections": {
        "docs": {"rows": rows, "file": "docs.jsonl", "sha256": sha256_file(directory / "docs.jsonl")}}}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def published(store, stamp: str, rows: int, created: str = "2026-12-05T02:00:00Z") -> str:
    staged = store.stage("prod", stamp)
    export_into(staged, rows, created)
    return store.publish(staged, "prod", stamp)


def keys(server, bucket: str) -> list[str]:
    return sorted(str(p.relative_to(server.root / bucket)) for p in (server.root / bucket).rglob("*") if p.is_file())


def test_a_bucket_backup_is_uploaded_listed_read_and_downloaded_as_it_was_written(server, bucket, tmp_path):
    store = open_store(f"s3://{bucket}/milvus/", access(server))
    assert isinstance(store, S3Store)
    staged = store.stage("prod", "20261205T020000Z")
    manifest = export_into(staged, 5)
    where = store.publish(staged, "prod", "20261205T020000Z")
    assert where == f"s3://{bucket}/milvus/prod/20261205T020000Z"
    assert keys(server, bucket) == ["milvus/prod/20261205T020000Z/docs.jsonl", "milvus/prod/20261205T020000Z/manifest.json"]
    assert not staged.exists()  # nothing of the fleet's data stays on the control host
    assert store.whole("prod") == ["20261205T020000Z"] and store.manifest("prod", "20261205T020000Z") == manifest
    with store.fetched(where) as directory:
        assert verify_files(directory, manifest) == []
        assert {p.name: oct(p.stat().st_mode & 0o777) for p in directory.iterdir()} == {
            "docs.jsonl": "0o600", "manifest.json": "0o600"}
        assert oct(directory.parent.stat().st_mode & 0o777) == "0o700"
    assert not directory.exists()


def test_an_upload_cut_off_before_its_manifest_is_not_a_backup_and_a_failed_one_leaves_nothing(
        server, bucket, monkeypatch):
    store = open_store(f"s3://{bucket}", access(server))
    published(store, "20261204T020000Z", 3)
    # A backup whose upload died after its data: no manifest, so not a backup to restore or to count.
    store.client().put_object(Bucket=bucket, Key="prod/20261205T020000Z/docs.jsonl", Body=b"{}\n")
    assert store.whole("prod") == ["20261204T020000Z"]
    with pytest.raises(StoreError, match="holds no manifest.json"):
        with store.fetched(f"s3://{bucket}/prod/20261205T020000Z"):
            pass

    # An upload whose manifest PUT committed but whose answer was an error (boto3 wraps S3's in
    # S3UploadFailedError): a StoreError naming the backup, and nothing of it left, manifest first.
    client = store.client()
    upload = client.upload_file

    def committed_then_failed(path, bucket_name, key, *args, **kwargs):
        upload(path, bucket_name, key, *args, **kwargs)
        if key.endswith("manifest.json"):
            raise S3UploadFailedError(f"Failed to upload {path} to {bucket_name}/{key}: connection reset")

    monkeypatch.setattr(client, "upload_file", committed_then_failed)
    staged = store.stage("prod", "20261206T020000Z")
    export_into(staged, 4)
    with pytest.raises(StoreError, match=rf"upload s3://{bucket}/prod/20261206T020000Z: Failed to upload"):
        store.publish(staged, "prod", "20261206T020000Z")
    assert not any(k.startswith("prod/20261206T020000Z/") for k in keys(server, bucket))
    assert store.whole("prod") == ["20261204T020000Z"]
    assert not staged.exists() and list(staged.parent.iterdir()) == []  # its claim (lock file) gone too


def test_a_removal_takes_the_manifest_first_and_a_refused_delete_is_an_error(server, bucket, monkeypatch):
    store = open_store(f"s3://{bucket}", access(server))
    published(store, "20261201T020000Z", 1)
    published(store, "20261202T020000Z", 2)
    client = store.client()
    delete = client.delete_objects
    batches = []

    def recorded(**kwargs):
        batches.append(sorted(o["Key"] for o in kwargs["Delete"]["Objects"]))
        return delete(**kwargs)

    monkeypatch.setattr(client, "delete_objects", recorded)
    data_backup.prune(store, "prod", keep=1)
    assert batches == [["prod/20261201T020000Z/manifest.json"], ["prod/20261201T020000Z/docs.jsonl"]]
    # S3 answers 200 with the keys it refused (access, object lock): not removed, and said so.
    monkeypatch.setattr(client, "delete_objects", lambda **kwargs: {"Errors": [
        {"Key": o["Key"], "Code": "AccessDenied"} for o in kwargs["Delete"]["Objects"]]})
    with pytest.raises(StoreError, match="prod/20261202T020000Z/manifest.json: AccessDenied"):
        store.remove("prod", "20261202T020000Z")


def test_only_names_gpufleet_gives_backups_count(server, bucket, tmp_path):
    for store in (open_store(str(tmp_path / "backups")), open_store(f"s3://{bucket}", access(server))):
        published(store, "20261201T020000Z", 3)
        published(store, "pre-upgrade-copy", 3)  # an operator's copy beside them: never pruned, never newest
        assert store.whole("prod") == ["20261201T020000Z"]


def test_retention_and_the_row_high_water_mark_read_the_bucket(server, bucket):
    store = open_store(f"s3://{bucket}/m", access(server))
    for day, rows in ((1, 120), (2, 90), (3, 100)):
        published(store, f"2026120{day}T020000Z", rows)
    assert data_backup.most_rows(store, "prod") == {"docs": 120}
    removed = data_backup.prune(store, "prod", keep=2)
    assert removed == [f"s3://{bucket}/m/prod/20261201T020000Z"]
    assert store.whole("prod") == ["20261202T020000Z", "20261203T020000Z"]
    assert not any("20261201" in k for k in keys(server, bucket))


def test_a_local_directory_and_a_bucket_give_the_same_answers(server, bucket, tmp_path):
    stores = [open_store(str(tmp_path / "backups")), open_store(f"s3://{bucket}", access(server))]
    assert isinstance(stores[0], LocalStore)
    for store in stores:
        published(store, "20261201T020000Z", 2)
        published(store, "20261202T020000Z", 7)
        (tmp_path / "backups" / "prod" / "20261203T020000Z.partial").mkdir(exist_ok=True)
    assert [s.whole("prod") for s in stores] == [["20261201T020000Z", "20261202T020000Z"]] * 2
    assert [data_backup.most_rows(s, "prod") for s in stores] == [{"docs": 7}] * 2
    with pytest.raises(StoreError, match="another backup is running or ran this second"):
        stores[0].stage("prod", "20261202T020000Z")
    with pytest.raises(StoreError, match="a backup ran this second"):
        stores[1].stage("prod", "20261202T020000Z")


def test_wrong_keys_or_a_missing_bucket_name_the_location_and_never_a_key(server, bucket, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text(f"[default]\naws_access_key_id = {server.access_key}\naws_secret_access_key = not-the-key\n")
    store = open_store(f"s3://{bucket}", S3Access(endpoint=server.endpoint, credentials_file=str(wrong)))
    with pytest.raises(StoreError) as refused:
        store.whole("prod")
    assert f"s3://{bucket}/prod/" in str(refused.value) and "SignatureDoesNotMatch" in str(refused.value)
    assert "not-the-key" not in str(refused.value) and server.secret_key not in str(refused.value)
    with pytest.raises(StoreError, match="NoSuchBucket"):
        open_store("s3://no-such-bucket", access(server)).whole("prod")


def test_the_credentials_file_is_the_aws_format_and_its_errors_name_the_key_not_the_value(tmp_path):
    path = tmp_path / "creds"
    path.write_text("[backup]\naws_access_key_id = AKIAEXAMPLE\naws_secret_access_key = s3cr3t-value\n")
    assert read_credentials(str(path)) == {"aws_access_key_id": "AKIAEXAMPLE", "aws_secret_access_key": "s3cr3t-value"}
    path.write_text("[default]\naws_access_key_id = AKIAEXAMPLE\n[other]\naws_secret_access_key = s3cr3t-value\n")
    with pytest.raises(StoreError, match=r"\[default\] has no aws_secret_access_key") as missing:
        read_credentials(str(path))
    assert "AKIAEXAMPLE" not in str(missing.value)
    path.write_text("aws_secret_access_key = s3cr3t-value\n")
    with pytest.raises(StoreError, match="not in the AWS credentials format") as garbled:
        read_credentials(str(path))
    assert "s3cr3t" not in str(garbled.value)
    with pytest.raises(StoreError, match="No such file"):
        read_credentials(str(tmp_path / "absent"))


def test_drift_reads_the_newest_backup_from_the_bucket(server, bucket):
    location, s3 = f"s3://{bucket}/nightly", access(server)
    store = open_store(location, s3)

    def causes(rows_now):
        return [i.cause for i in findings("inventory/prod.py", location, 26, lambda: rows_now, NOW, s3)]

    assert causes({"docs": 1}) == [f"no backup of prod in {location}"]
    published(store, "20261201T020000Z", 50, created="2026-12-01T02:00:00Z")
    assert causes({"docs": 50}) == ["the newest backup is 106 h old (at most 26 h)"]
    published(store, "20261205T020000Z", 60)
    items = findings("inventory/prod.py", location, 26, lambda: {"docs": 40}, NOW, s3)
    assert [i.cause for i in items] == ["rows dropped since the last backup: docs has 40, 60 in 20261205T020000Z"]
    assert f"--from {location}/prod/20261205T020000Z --replace" in items[0].details[0]
    with pytest.raises(NotChecked, match="could not read the backups"):
        findings("inventory/prod.py", "s3://no-such-bucket", 26, lambda: {}, NOW, s3)


def test_a_bad_bucket_location_or_endpoint_in_the_settings_is_refused_naming_what_is_expected():
    from pydantic import ValidationError

    from gpufleet.settings_data import DataSettings

    assert DataSettings(milvus_backup_dir="s3://fleet-backups/milvus").milvus_backup_dir == "s3://fleet-backups/milvus"
    with pytest.raises(ValidationError, match="expected s3://BUCKET"):
        DataSettings(milvus_backup_dir="s3://Fleet_Backups")
    with pytest.raises(ValidationError, match="milvus_backup_s3_endpoint"):
        DataSettings(milvus_backup_s3_endpoint="minio.internal:9000")
    with pytest.raises(ValidationError, match="absolute or ~/ path"):
        DataSettings(milvus_backup_s3_credentials_file="creds.ini")


def test_a_killed_runs_staging_is_swept_by_the_next_bucket_backup_and_restore_a_live_ones_kept(server, bucket):
    """Real processes, killed with SIGKILL: no Python cleanup runs, only the kernel drops their claims."""
    from gpufleet.backup_store import staging_root
    from tests.unit.test_claimed_dirs import _killed, _run_that_claims

    store = open_store(f"s3://{bucket}", access(server))
    where = published(store, "20261205T020000Z", 2)
    staging_root().mkdir(parents=True, exist_ok=True)
    dead_backup = _run_that_claims(staging_root() / "prod-20261206T020000Z-dead")
    _killed(dead_backup)
    live_restore = _run_that_claims(staging_root() / "restore-live")
    try:
        with store.fetched(where) as directory:  # a restore's download sweeps first
            assert sorted(p.name for p in staging_root().iterdir()) == sorted(
                [directory.name, directory.name + ".lock", "restore-live", "restore-live.lock"])
        staged = store.stage("prod", "20261206T030000Z")
        store.discard(staged)
        assert sorted(p.name for p in staging_root().iterdir()) == ["restore-live", "restore-live.lock"]
    finally:
        _killed(live_restore)
    published(store, "20261206T040000Z", 3)  # the next backup sweeps the restore killed meanwhile
    assert list(staging_root().iterdir()) == []


def test_bucket_staging_is_private_and_not_in_tmp(tmp_path, server, bucket):
    staged = open_store(f"s3://{bucket}", access(server)).stage("prod", "20261205T020000Z")
    assert str(staged).startswith(os.environ["GPUFLEET_STATE_DIR"])
    assert oct(staged.stat().st_mode & 0o777) == "0o700"


def test_validate_reads_the_buckets_credentials_file_and_the_cli_refuses_a_bad_location(tmp_path):
    from click.testing import CliRunner

    from gpufleet import PROJECT_ROOT
    from gpufleet.cli import main as cli
    from gpufleet.fleet import load_fleet
    from gpufleet.settings import SettingsError

    inventory = str(PROJECT_ROOT / "inventory/lab.py")
    garbled = tmp_path / "creds"
    garbled.write_text("aws_secret_access_key = s3cr3t-value\n")
    with pytest.raises(SettingsError) as refused:
        load_fleet(inventory, {"milvus_backup_dir": "s3://fleet-backups/milvus",
                               "milvus_backup_s3_credentials_file": str(garbled)}, cwd=str(PROJECT_ROOT))
    [issue] = [i for i in refused.value.issues if i.severity == "error"]
    assert issue.key == "milvus_backup_s3_credentials_file" and issue.value == str(garbled)
    assert "not in the AWS credentials format" in issue.expected and "s3cr3t" not in issue.expected
    # The same file is not read while the backups are on disk: nothing asks for it.
    load_fleet(inventory, {"milvus_backup_s3_credentials_file": str(garbled)}, cwd=str(PROJECT_ROOT))

    for args, expected in ((["backup", inventory, "--to", "backups"], "an absolute or ~/ directory"),
                           (["backup", inventory, "--to", "s3://Fleet_Backups"], "expected s3://BUCKET"),
                           (["backup", "install-timer", inventory, "--backup-dir", "s3://x", "--no-enable"],
                            "expected s3://BUCKET")):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2 and expected in result.output, (args, result.output)


def test_an_endpoint_with_credentials_in_it_is_refused():
    from pydantic import ValidationError

    from gpufleet.settings_data import DataSettings

    with pytest.raises(ValidationError, match="milvus_backup_s3_endpoint"):
        DataSettings(milvus_backup_s3_endpoint="https://AKIA:secret@minio.internal:9000")
    assert DataSettings(milvus_backup_s3_endpoint="https://minio.internal:9000").milvus_backup_s3_endpoint


def test_an_object_smaller_in_the_bucket_than_its_file_fails_the_backup_before_its_manifest(server, bucket,
                                                                                            monkeypatch):
    """A PUT the server answered 200 but stored short (a proxy's cut, a full disk on a gateway)."""
    store = open_store(f"s3://{bucket}", access(server))
    client = store.client()
    upload, sent = client.upload_file, []

    def stored_short(path, bucket_name, key, *args, **kwargs):
        sent.append(key)
        if key.endswith("docs.jsonl"):
            client.put_object(Bucket=bucket_name, Key=key, Body=Path(path).read_bytes()[:-10])
        else:
            upload(path, bucket_name, key, *args, **kwargs)

    monkeypatch.setattr(client, "upload_file", stored_short)
    staged = store.stage("prod", "20261205T020000Z")
    export_into(staged, 4)
    size = (staged / "docs.jsonl").stat().st_size
    with pytest.raises(StoreError, match=rf"upload s3://{bucket}/prod/20261205T020000Z: docs.jsonl is {size - 10} "
                                         rf"bytes in the bucket, {size} on this host"):
        store.publish(staged, "prod", "20261205T020000Z")
    assert sent == ["prod/20261205T020000Z/docs.jsonl"]  # the manifest never went up
    assert keys(server, bucket) == [] and store.whole("prod") == []


def test_a_published_backup_reaches_the_disk_files_directory_then_the_rename(tmp_path, monkeypatch):
    """Each file is synced as it is written (milvus_dump, write_private); publish syncs the staged
    directory's names, renames it, and syncs the parent that holds the rename."""
    store = LocalStore(tmp_path / "backups")
    staged = store.stage("prod", "20261205T020000Z")
    export_into(staged, 2)
    final = tmp_path / "backups" / "prod" / "20261205T020000Z"
    synced, real = [], os.fsync

    def fsync(fd):
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), final.is_dir()))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert store.publish(staged, "prod", "20261205T020000Z") == str(final)
    # (path, renamed yet?): the staged directory before the rename, its parent after it
    assert synced == [(str(staged), False), (str(final.parent), True)]
