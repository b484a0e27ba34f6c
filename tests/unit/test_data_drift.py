"""gpufleet/data_drift.py: what drift says about the fleet's Milvus backups, from backup
directories laid out as `gpufleet backup` writes them (the lab test checks the rows against a
real Milvus: tests/lab/test_data_tier.py)."""

from __future__ import annotations

import datetime
import json

import pytest

from gpufleet.data_drift import findings

NOW = datetime.datetime(2026, 12, 5, 12, 0, tzinfo=datetime.UTC)


def backup(root, stamp: str, created: str, rows: dict[str, int], partial: bool = False):
    """A backup directory of inventory/prod.py as data_backup.backup leaves it."""
    path = root / "prod" / (stamp + (".partial" if partial else ""))
    path.mkdir(parents=True)
    collections = {name: {"rows": n, "file": f"{name}.jsonl", "sha256": "0" * 64} for name, n in rows.items()}
    (path / "manifest.json").write_text(json.dumps({"format": 1, "created": created, "collections": collections}))
    return path


def causes(root, rows_now: dict[str, int], max_age_h: int = 26) -> list[str]:
    return [item.cause for item in findings("inventory/prod.py", str(root), max_age_h, lambda: rows_now, NOW)]


def test_a_fresh_backup_with_the_rows_milvus_still_has_is_clean(tmp_path):
    backup(tmp_path, "20261205T020000Z", "2026-12-05T02:00:00Z", {"docs": 120, "faq": 3})
    assert causes(tmp_path, {"docs": 125, "faq": 3, "new": 1}) == []  # grown and new collections are fine


def test_no_backup_at_all_is_drift_and_milvus_is_not_asked(tmp_path):
    def never():
        raise AssertionError("rows counted with nothing to compare them with")

    items = findings("inventory/prod.py", str(tmp_path), 26, never, NOW)
    assert [i.cause for i in items] == [f"no backup of prod in {tmp_path}"]
    assert "gpufleet backup install-timer" in items[0].details[0]


def test_an_unfinished_backup_does_not_count(tmp_path):
    backup(tmp_path, "20261205T020000Z", "2026-12-05T02:00:00Z", {"docs": 120}, partial=True)
    assert causes(tmp_path, {"docs": 120}) == [f"no backup of prod in {tmp_path}"]


@pytest.mark.parametrize(("created", "max_age_h", "expected"), [
    ("2026-12-04T02:00:00Z", 26, ["the newest backup is 34 h old (at most 26 h)"]),
    ("2026-12-04T11:00:00Z", 26, []),
    ("2026-12-04T11:00:00Z", 24, ["the newest backup is 25 h old (at most 24 h)"]),
])
def test_the_newest_backup_must_be_younger_than_the_schedule(tmp_path, created, max_age_h, expected):
    backup(tmp_path, "20261201T020000Z", "2026-12-01T02:00:00Z", {"docs": 100})
    backup(tmp_path, created.replace("-", "").replace(":", ""), created, {"docs": 100})
    assert causes(tmp_path, {"docs": 100}, max_age_h) == expected


def test_rows_dropped_or_a_collection_gone_since_the_newest_backup(tmp_path):
    backup(tmp_path, "20261204T020000Z", "2026-12-04T02:00:00Z", {"docs": 500, "faq": 3})
    newest = backup(tmp_path, "20261205T020000Z", "2026-12-05T02:00:00Z", {"docs": 120, "faq": 3})
    items = findings("inventory/prod.py", str(tmp_path), 26, lambda: {"docs": 90}, NOW)
    # Compared with the newest backup (120), not the older one: the nightly backup moves the baseline.
    assert [i.cause for i in items] == ["rows dropped since the last backup: docs has 90, 120 in 20261205T020000Z",
                                        "rows dropped since the last backup: faq has 0, 3 in 20261205T020000Z"]
    assert f"--from {newest} --replace" in items[0].details[0]
