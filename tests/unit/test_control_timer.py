"""The nightly timers' units (gpufleet/control_timer.py): every flag checked before a file is written,
paths quoted by systemd's rules, the state directory left to the run (0700)."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from gpufleet import control_timer, drift_timer
from gpufleet.cli import main

HAS_ANALYZE = shutil.which("systemd-analyze") is not None
TIMERS = {"drift": "--state-dir", "backup": "--backup-dir"}


def install(tmp_path, command: str, *flags: str):
    return CliRunner().invoke(main, [command, "install-timer", "inventory/prod.py", "--no-enable",
                                     "--unit-dir", str(tmp_path), *flags])


@pytest.mark.parametrize("command", sorted(TIMERS))
@pytest.mark.parametrize("calendar", [
    "daily\nExecStartPre=/bin/sh -c id", "*-*-* 03:00:00\r", "*-*-* 03:00:00 %n",
    pytest.param("bogus", marks=pytest.mark.skipif(not HAS_ANALYZE, reason="needs systemd-analyze")),
])
def test_a_bad_on_calendar_is_a_usage_error_and_nothing_is_written(tmp_path, command, calendar):
    result = install(tmp_path, command, "--on-calendar", calendar)
    assert result.exit_code == 2, result.output
    assert "--on-calendar" in result.output and repr(calendar) in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", sorted(TIMERS))
@pytest.mark.parametrize("value", ["/var/lib/gpu%fleet", "/var/lib/gpufleet\n[Service]"])
def test_a_path_that_cannot_go_into_a_unit_is_a_usage_error(tmp_path, command, value):
    for flag in ("--textfile-dir", TIMERS[command]):
        result = install(tmp_path, command, flag, value)
        assert result.exit_code == 2, result.output
        assert flag in result.output and repr(value) in result.output
    assert list(tmp_path.iterdir()) == []


def test_good_flags_are_written(tmp_path):
    result = install(tmp_path, "drift", "--on-calendar", "daily", "--state-dir", "/srv/drift state")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpufleet-drift.service", "gpufleet-drift.timer"]


def test_without_systemd_analyze_only_the_characters_are_checked(monkeypatch):
    monkeypatch.setattr(control_timer.shutil, "which", lambda name: None)
    assert control_timer.calendar_problem("bogus") is None
    assert "newline" in control_timer.calendar_problem("daily\nx")


def test_paths_are_quoted_by_systemds_rules_and_the_run_makes_its_own_directories():
    service = drift_timer.units("inventory/prod.py", "daily", "/srv/drift state", "/srv/text files", fix=False)[
        "gpufleet-drift.service"]
    # No `mkdir -p` before the run: it would make /srv/drift and ./state, and the state directory 0755.
    assert "ExecStartPre" not in service
    assert ' --report "/srv/drift state/last.json" ' in service
    assert ' --prometheus "/srv/text files/gpufleet_drift.prom"' in service
    assert control_timer.systemd_quote("/plain/path-1.json") == "/plain/path-1.json"
    assert control_timer.systemd_quote('a "b" $HOME\\x') == '"a \\"b\\" $$HOME\\\\x"'
    with pytest.raises(ValueError, match="no %"):
        control_timer.service_unit("m", "d", ["/usr/bin/true", "/a%b"], "x")


def test_the_drift_textfile_directory_is_made_by_the_run(tmp_path):
    from gpufleet.drift import DriftReport, HostDrift, write_prometheus

    path = tmp_path / "node-exporter" / "gpufleet_drift.prom"
    write_prometheus(DriftReport([HostDrift("a")], started=1.0), str(path))
    assert "gpufleet_drift_operations" in path.read_text()
