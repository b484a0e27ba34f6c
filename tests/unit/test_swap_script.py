"""operations/util.py swap_script run in sh on files in a scratch directory, with a cp or mv that
fails (a full disk, a read-only file) and systemctl/curl stand-ins: a failed step stops the script
before the swap, or rolls back what was moved."""

import subprocess

from operations import monitoring
from operations.util import Staged, swap_script


def _bin(tmp_path, **scripts):
    """A PATH directory of stand-ins: systemctl records its calls; others as given."""
    fakes = tmp_path / "bin"
    fakes.mkdir()
    for name, body in {"systemctl": 'echo "systemctl $*" >> "$FAKE_LOG"\n', "sleep": "exit 0\n", **scripts}.items():
        (fakes / name).write_text("#!/bin/sh\n" + body)
        (fakes / name).chmod(0o755)
    return fakes


def _files(tmp_path, *names):
    etc = tmp_path / "etc"
    etc.mkdir()
    files = []
    for name in names:
        (etc / name).write_text(f"live {name}\n")
        (etc / f"{name}.new").write_text(f"new {name}\n")
        files.append(Staged(f"{etc}/{name}.new", f"{etc}/{name}", f"{etc}/{name}.old"))
    return etc, files


def _run(tmp_path, script, fakes):
    env = {"PATH": f"{fakes}:/usr/bin:/bin", "FAKE_LOG": str(tmp_path / "log")}
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60, env=env)
    log = (tmp_path / "log").read_text() if (tmp_path / "log").exists() else ""
    return out, log


def _script(files):
    # The service always loads what it is given: only the cp/mv stand-ins can make the script fail.
    return swap_script(files, [], reload="systemctl reload svc", probe="ok=1; break", tries=3, interval="0",
                       failed="svc did not load it")


# A cp that fails half-way through its copy, as on a full disk.
FULL_DISK_CP = 'for last; do :; done; echo "partial" > "$last"; echo "cp: error writing: No space left on device" >&2; exit 1\n'


def test_a_live_file_that_cannot_be_kept_stops_the_script_before_the_swap(tmp_path):
    etc, files = _files(tmp_path, "app.conf")
    out, log = _run(tmp_path, _script(files), _bin(tmp_path, cp=FULL_DISK_CP))
    assert out.returncode == 1
    assert "cannot copy" in out.stderr
    # The live file is untouched: without a copy to roll back to, nothing was swapped or reloaded.
    assert (etc / "app.conf").read_text() == "live app.conf\n"
    assert log == ""
    # Neither the partial copy nor the upload stays behind (a later run would roll back to the partial one).
    assert sorted(p.name for p in etc.iterdir()) == ["app.conf"]


def test_the_second_copy_failing_leaves_the_first_file_live_too(tmp_path):
    etc, files = _files(tmp_path, "rules.yml", "app.conf")
    fail_second = f'case "$3" in */app.conf.old) {FULL_DISK_CP};; esac\nexec /bin/cp "$@"\n'
    out, log = _run(tmp_path, _script(files), _bin(tmp_path, cp=fail_second))
    assert out.returncode == 1 and "cannot copy" in out.stderr
    assert (etc / "rules.yml").read_text() == "live rules.yml\n"
    assert (etc / "app.conf").read_text() == "live app.conf\n"
    assert log == ""


def test_a_new_file_that_cannot_be_moved_in_rolls_back_the_ones_that_were(tmp_path):
    etc, files = _files(tmp_path, "rules.yml", "app.conf")
    fail_second = 'case "$2" in */app.conf.new) echo "mv: cannot move: Read-only file" >&2; exit 1;; esac\nexec /bin/mv "$@"\n'
    out, log = _run(tmp_path, _script(files), _bin(tmp_path, mv=fail_second))
    assert out.returncode == 1 and "cannot move the new files in" in out.stderr
    # The first file had been moved in: it goes back, and the service is told once (the roll-back's reload).
    assert (etc / "rules.yml").read_text() == "live rules.yml\n"
    assert (etc / "app.conf").read_text() == "live app.conf\n"
    assert log == "systemctl reload svc\n"


def test_the_swap_still_swaps_reloads_and_cleans_up(tmp_path):
    etc, files = _files(tmp_path, "rules.yml", "app.conf")
    out, log = _run(tmp_path, _script(files), _bin(tmp_path))
    assert out.returncode == 0, out.stderr
    assert (etc / "rules.yml").read_text() == "new rules.yml\n" and (etc / "app.conf").read_text() == "new app.conf\n"
    assert sorted(p.name for p in etc.iterdir()) == ["app.conf", "rules.yml"] and log == "systemctl reload svc\n"


def test_prometheus_stops_when_it_cannot_copy_the_new_config_to_check_it(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "prometheus.yml").write_text("old config\n")
    (etc / monitoring.RULES_NAME).write_text("groups: []\n")
    (etc / "prometheus.yml.gpufleet-new").write_text("new config\n")
    script = monitoring.prometheus_script(9090, restart=False).replace("/etc/prometheus/", f"{etc}/")
    fakes = _bin(tmp_path, cp=FULL_DISK_CP, promtool="exit 0\n")
    out, log = _run(tmp_path, script, fakes)
    assert out.returncode == 1 and "cannot copy the new config to check it" in out.stderr
    assert (etc / "prometheus.yml").read_text() == "old config\n" and log == ""
    assert sorted(p.name for p in etc.iterdir()) == ["gpufleet-alerts.yml", "prometheus.yml"]
