"""gpufleet backup/restore's control-side parts: the manifest check, retention, the timer and its metrics."""

from __future__ import annotations

import json
import os

import pytest

from gpufleet import backup_timer, data_backup
from gpufleet.backup_store import open_store
from gpufleet.milvus_dump import sha256_file, verify_files


def _backup(root, name: str, rows: int):
    path = root / "lab" / name
    path.mkdir(parents=True)
    (path / "docs.jsonl").write_text('{"id": 1}\n' * rows)
    manifest = {"format": 1, "collections": {"docs": {"rows": rows, "file": "docs.jsonl",
                                                      "sha256": sha256_file(path / "docs.jsonl")}}}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path, manifest


def test_a_damaged_or_missing_file_is_found_before_a_restore(tmp_path):
    path, manifest = _backup(tmp_path, "20261201T020000Z", 3)
    assert verify_files(path, manifest) == []
    (path / "docs.jsonl").write_text('{"id": 2}\n' * 3)
    assert verify_files(path, manifest) == [f"docs: {path}/docs.jsonl does not match its sha256 in the manifest"]
    (path / "docs.jsonl").unlink()
    assert verify_files(path, manifest) == [f"docs: {path}/docs.jsonl is missing"]


def test_only_whole_backups_count_and_restore_wants_a_manifest(tmp_path):
    _backup(tmp_path, "20261201T020000Z", 3)
    _backup(tmp_path, "20261202T020000Z", 4)
    (tmp_path / "lab" / "20261203T020000Z.partial").mkdir()  # an export that died: not a backup
    (tmp_path / "lab" / "20261204T020000Z").mkdir()  # no manifest: not a backup either
    assert open_store(str(tmp_path)).whole("lab") == ["20261201T020000Z", "20261202T020000Z"]
    with pytest.raises(data_backup.BackupError, match="no manifest.json"):
        data_backup.restore("inventory/lab.py", str(tmp_path / "lab" / "20261204T020000Z"))


def test_a_fleet_without_a_milvus_host_has_nothing_to_back_up(tmp_path):
    inventory = tmp_path / "inventory.py"
    inventory.write_text("gpu_nodes = [('gpu-node-01', {'private_address': '10.40.1.11'})]\n")
    with pytest.raises(data_backup.BackupError, match="no host in group vector_db"):
        data_backup.backup(str(inventory), str(tmp_path / "backups"))
    assert not list((tmp_path / "backups").glob("*/*"))  # nothing left behind, not even a .partial


def test_the_timer_runs_the_backup_with_retention_and_metrics_and_tolerates_a_drop():
    units = backup_timer.units("inventory/prod.py", "*-*-* 02:00:00", None, 7, "/var/lib/prometheus/node-exporter")
    service = units["gpufleet-backup.service"]
    # No --to: each run backs up to milvus_backup_dir as it is then, where drift looks.
    assert " backup inventory/prod.py --keep 7 --prometheus " \
           "/var/lib/prometheus/node-exporter/gpufleet_milvus_backup.prom" in service
    assert "SuccessExitStatus=2" in service
    assert "OnCalendar=*-*-* 02:00:00" in units["gpufleet-backup.timer"]
    elsewhere = backup_timer.units("inventory/prod.py", "*-*-* 02:00:00", "s3://fleet-backups/milvus", 7, "/tmp")
    assert " backup inventory/prod.py --to s3://fleet-backups/milvus --keep 7 " in elsewhere["gpufleet-backup.service"]


def test_a_backup_without_to_goes_where_drift_and_the_rollout_look(tmp_path):
    """gpufleet backup's default location is the Milvus host's milvus_backup_dir, not a second place."""
    inventory = tmp_path / "inventory.py"
    inventory.write_text("gpu_nodes = [('gpu-node-01', {'private_address': '10.40.1.11'})]\n"
                         "vector_db = [('db-01', {'private_address': '10.40.2.11'})]\n")
    nightly = data_backup.store_for(None, str(inventory), {"milvus_backup_dir": str(tmp_path / "nightly")})
    assert nightly.where("inventory", "T") == str(tmp_path / "nightly" / "inventory" / "T")
    assert data_backup.store_for(None, str(inventory)).where("inventory", "T") == "/var/lib/gpufleet/backups/inventory/T"
    assert data_backup.store_for(str(tmp_path / "b"), str(inventory)).where("i", "T") == str(tmp_path / "b" / "i" / "T")


def test_metrics_say_when_and_what_and_which_collection_lost_rows(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    path = tmp_path / "m.prom"
    old = os.umask(0o077)  # a service's private umask must not hide the file from node_exporter
    try:
        backup_timer.write_metrics(str(path), {"docs": 100, "faq": 7}, {"docs": (120, 100), "old": (5, 0)},
                                   now=1_700_000_000)
    finally:
        os.umask(old)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(path.read_text()) for s in family.samples}
    assert samples[("gpufleet_milvus_backup_last_success_timestamp_seconds", ())] == 1_700_000_000
    assert samples[("gpufleet_milvus_backup_rows", (("collection", "docs"),))] == 100
    dropped = {dict(k[1])["collection"]: v for k, v in samples.items() if k[0] == "gpufleet_milvus_backup_rows_dropped"}
    assert dropped == {"docs": 1, "faq": 0, "old": 1}
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"  # node_exporter reads it; no secrets in it


def test_rows_are_compared_with_the_most_any_kept_backup_has_and_pruning_keeps_the_newest(tmp_path):
    for day, rows in ((1, 120), (2, 90), (3, 100)):  # rows dropped on day 2, partly back on day 3
        _backup(tmp_path, f"2026120{day}T020000Z", rows)
    store = open_store(str(tmp_path))
    most = data_backup.most_rows(store, "lab")
    assert most == {"docs": 120}
    assert data_backup.dropped_rows(most, {"docs": 100}) == {"docs": (120, 100)}  # still missing: still reported
    removed = data_backup.prune(store, "lab", keep=2)
    assert removed == [str(tmp_path / "lab" / "20261201T020000Z")]
    assert store.whole("lab") == ["20261202T020000Z", "20261203T020000Z"]


def test_a_backup_kept_while_pruning_fails_is_reported_as_kept_with_its_metrics(tmp_path, monkeypatch):
    """Retention runs after the backup is published: its failure is its own, and the new backup stands."""
    import types

    from click.testing import CliRunner

    from gpufleet.backup_store import LocalStore, StoreError
    from gpufleet.cli import main as cli

    root = tmp_path / "backups"
    for day in (1, 2):
        _backup(root, f"2026120{day}T020000Z", 3)

    def exported(action, port, directory=None, replace=False, root_password_file=None):  # milvus_dump's export
        directory.mkdir(mode=0o700)
        (directory / "docs.jsonl").write_text('{"id": 1}\n' * 3)
        (directory / "manifest.json").write_text(json.dumps({"format": 1, "collections": {"docs": {
            "rows": 3, "file": "docs.jsonl", "sha256": sha256_file(directory / "docs.jsonl")}}}))
        return {"docs": 3}

    db = types.SimpleNamespace(name="db-01", settings=types.SimpleNamespace(milvus_root_secret=lambda: None,
                                                                            milvus_mode="standalone"))
    monkeypatch.setattr(data_backup, "store_for", lambda location, inventory, overrides=None: open_store(str(root)))
    monkeypatch.setattr(data_backup, "_on_milvus_host", lambda inventory, overrides, work: work(None, db, 19530))
    monkeypatch.setattr(data_backup, "_dump", exported)

    def refused(self, stem, stamp):
        raise StoreError(f"{self.root / stem / stamp}: Permission denied")

    monkeypatch.setattr(LocalStore, "remove", refused)
    metrics = tmp_path / "m.prom"
    result = CliRunner().invoke(cli, ["backup", "inventory/lab.py", "--keep", "1", "--prometheus", str(metrics)])
    [new] = [s for s in open_store(str(root)).whole("lab") if s not in ("20261201T020000Z", "20261202T020000Z")]
    assert "nothing kept" not in result.output
    assert f"backup kept at {root / 'lab' / new}, but removing older backups (--keep 1) failed: " \
           f"{root / 'lab' / '20261201T020000Z'}: Permission denied" in result.output
    assert f"{root / 'lab' / new}: docs 3 rows" in result.output
    assert result.exit_code == 3  # not 0 (older backups pile up), not 1 (that is "no backup")
    assert "gpufleet_milvus_backup_last_success_timestamp_seconds" in metrics.read_text()
