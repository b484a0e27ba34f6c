"""Alertmanager's config on an lb host: the operation's commands run in sh on a scratch /etc/prometheus
(real amtool; systemctl, curl and chown stand-ins), and the webhook URLs it accepts, against amtool."""

import base64
import hashlib
import json
import shutil
import subprocess

import pytest
from pyinfra.api import OperationValueError
from pyinfra.context import ctx_host, ctx_state
from pyinfra_testing.operations import parse_commands
from pyinfra_testing.util import FakeState, create_host

from gpufleet import PROJECT_ROOT
from gpufleet.fleet import load_fleet
from gpufleet.settings import SettingsError
from operations import monitoring

PROD = str(PROJECT_ROOT / "inventory" / "prod.py")
WEBHOOK_FILE = PROJECT_ROOT / "tests" / "fixtures" / "prometheus" / "webhook-url"
URL = WEBHOOK_FILE.read_text().strip()
CONF, NEW, OLD = "/etc/prometheus/alertmanager.yml", "/etc/prometheus/alertmanager.yml.gpufleet-new", \
    "/etc/prometheus/alertmanager.yml.gpufleet-old"
LIVE = monitoring.render_alertmanager(URL, group_wait="30s", group_interval="5m")

FAKES = {
    "systemctl": 'echo "systemctl $*" >> "$FAKE_LOG"\n',
    # Alertmanager's /metrics with the reload result the test chose.
    "curl": 'echo "alertmanager_config_last_reload_successful $FAKE_RELOAD_OK"\n'
            'echo "alertmanager_config_last_reload_success_timestamp_seconds $(date +%s)"\n',
    "chown": "exit 0\n",  # no prometheus group here; the owner is in the command text (the cases)
    "sleep": "exit 0\n",
}


@pytest.fixture
def amtool():
    found = shutil.which("amtool")
    assert found, "amtool not found: install Debian's `prometheus-alertmanager` package (.ci/run does)"
    return found


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _facts(etc) -> dict:
    """What the host reports, read from the scratch directory (as pyinfra's facts would)."""
    def file(name):
        path = etc / name
        return {"mode": int(oct(path.stat().st_mode & 0o777)[2:]), "user": "root", "group": "prometheus"} \
            if path.exists() else None
    defaults = monitoring.alertmanager_defaults(monitoring.ALERTMANAGER_LISTEN)
    return {
        "apt.PackageStates": {"packages=['prometheus-alertmanager']": {
            "prometheus-alertmanager": {"version": "0.25.0-1+b4", "held": False}}},
        "files.File": {f"path={monitoring.ALERTMANAGER_DEFAULTS}": {"mode": 644, "user": "root", "group": "root"},
                       f"path={CONF}": file("alertmanager.yml"), f"path={OLD}": file("alertmanager.yml.gpufleet-old")},
        "files.Sha1File": {f"path={monitoring.ALERTMANAGER_DEFAULTS}": hashlib.sha1(defaults.encode()).hexdigest()},
        "files.Sha256File": {f"path={CONF}": _sha256((etc / "alertmanager.yml").read_text())
                             if (etc / "alertmanager.yml").exists() else None},
        "files.Directory": {"path=/etc/default": {"mode": 755}},
        "edge.ServiceState": {"service=prometheus-alertmanager": {"active": "active", "enabled": "enabled"}},
    }


def _commands(etc, **kwargs) -> list:
    state = FakeState()
    host = create_host(state, facts=_facts(etc))
    with ctx_state.use(state), ctx_host.use(host):
        return parse_commands(list(monitoring.alertmanager._inner(webhook_url_file=str(WEBHOOK_FILE), **kwargs)))


def _deploy(tmp_path, amtool, reload_ok=1, **kwargs):
    """Run the operation's commands against tmp_path/etc (a converged host with LIVE); its result."""
    etc = tmp_path / "etc"
    if not etc.exists():
        etc.mkdir()
        (etc / "alertmanager.yml").write_text(LIVE)
        (etc / "alertmanager.yml").chmod(0o640)
    fakes = tmp_path / "bin"
    if not fakes.exists():
        fakes.mkdir()
        for name, body in FAKES.items():
            (fakes / name).write_text("#!/bin/sh\n" + body)
            (fakes / name).chmod(0o755)
        (fakes / "amtool").symlink_to(amtool)
    env = {"PATH": f"{fakes}:/usr/bin:/bin", "FAKE_LOG": str(tmp_path / "log"), "FAKE_RELOAD_OK": str(reload_ok)}
    (tmp_path / "log").write_text("")
    rc, stderr = 0, ""
    for command in _commands(etc, **kwargs):
        stdin = None
        if isinstance(command, dict):
            command, stdin = command["command"], command["_stdin"]
        assert isinstance(command, str), command
        out = subprocess.run(["sh", "-c", command.replace("/etc/prometheus", str(etc))], input=stdin,
                             capture_output=True, text=True, timeout=60, env=env)
        rc, stderr = out.returncode, stderr + out.stderr
        if rc:
            break  # pyinfra stops the operation at a failed command
    return rc, stderr, etc, (tmp_path / "log").read_text()


def test_a_config_amtool_rejects_never_goes_live_and_is_tried_again(tmp_path, amtool):
    # A zero group_interval: amtool refuses it ("group_interval cannot be zero"), the operation renders it.
    rc, stderr, etc, log = _deploy(tmp_path, amtool, group_interval="0s")
    assert rc == 1 and "amtool rejects" in stderr
    assert URL not in stderr and "TESTwebhookTOKEN" not in stderr
    # The live config is the one Alertmanager runs, nothing was reloaded, nothing is left beside it.
    assert (etc / "alertmanager.yml").read_text() == LIVE
    assert sorted(p.name for p in etc.iterdir()) == ["alertmanager.yml"] and log == ""
    # The next run sees the config still differs: it writes and checks it again instead of doing nothing.
    assert any(isinstance(c, dict) for c in _commands(etc, group_interval="0s"))


def test_a_config_alertmanager_does_not_load_is_rolled_back(tmp_path, amtool):
    rc, stderr, etc, log = _deploy(tmp_path, amtool, reload_ok=0, group_wait="10s")
    assert rc == 1 and "rolling back" in stderr
    assert (etc / "alertmanager.yml").read_text() == LIVE
    assert oct((etc / "alertmanager.yml").stat().st_mode & 0o777) == "0o640"
    assert sorted(p.name for p in etc.iterdir()) == ["alertmanager.yml"]
    assert log == "systemctl reload-or-restart prometheus-alertmanager\n" * 2  # the new one, then the old one again
    assert any(isinstance(c, dict) for c in _commands(etc, group_wait="10s"))


def test_a_checked_config_is_swapped_in_with_its_mode_and_loaded(tmp_path, amtool):
    rc, stderr, etc, log = _deploy(tmp_path, amtool, group_wait="10s")
    assert rc == 0, stderr
    live = etc / "alertmanager.yml"
    assert "group_wait: 10s" in live.read_text() and URL in live.read_text()
    assert oct(live.stat().st_mode & 0o777) == "0o640"
    assert sorted(p.name for p in etc.iterdir()) == ["alertmanager.yml"]
    assert log == "systemctl reload-or-restart prometheus-alertmanager\n"
    assert _commands(etc, group_wait="10s") == []  # converged


def test_the_new_config_is_written_beside_the_live_one_from_stdin():
    state = FakeState()
    facts = {
        "apt.PackageStates": {"packages=['prometheus-alertmanager']": {
            "prometheus-alertmanager": {"version": "0.25.0-1+b4", "held": False}}},
        "files.File": {f"path={monitoring.ALERTMANAGER_DEFAULTS}": {"mode": 644, "user": "root", "group": "root"},
                       f"path={CONF}": {"mode": 640, "user": "root", "group": "prometheus"}, f"path={OLD}": None},
        "files.Sha1File": {f"path={monitoring.ALERTMANAGER_DEFAULTS}": "0000"},
        "files.Sha256File": {f"path={CONF}": _sha256("old\n")},
        "files.Directory": {"path=/etc/default": {"mode": 755}},
        "edge.ServiceState": {"service=prometheus-alertmanager": {"active": "active", "enabled": "enabled"}},
    }
    host = create_host(state, facts=facts)
    with ctx_state.use(state), ctx_host.use(host):
        commands = parse_commands(list(monitoring.alertmanager._inner(webhook_url_file=str(WEBHOOK_FILE))))
    [write] = [c for c in commands if isinstance(c, dict)]
    assert write["command"].endswith(f'chown root:prometheus "$tmp" && chmod 640 "$tmp" && mv -f "$tmp" {NEW}')
    assert base64.b64decode(write["_stdin"]).decode() == LIVE
    assert URL not in json.dumps(commands).replace(write["_stdin"], "")


# --- webhook URLs: what Alertmanager (Go's net/url) refuses is refused before any host is touched ----

GO_REFUSES = ["http://alert-sink.example.internal:abc/hooks/x", "http://h:8o80/x", "http://[::1/x", "http:///x",
              "https://h/hooks/%zz", "https://h%41/x", "http://h x/", "http://h|x/", "http://u[x@h/x"]
ACCEPTED = ["https://hooks.example.org/services/T0F4K3/B9Q2W1/pQ7rS2tU4vW6", "http://10.40.0.9:9095/alert",
            "https://alert-sink.example.internal/hooks/gpufleet?token=abc&channel=gpu#x", "http://[fd00::9]:80/a",
            "https://user:pa%24s@h.example/x"]


def _amtool_accepts(amtool, tmp_path, url: str) -> bool:
    (tmp_path / "am.yml").write_text(monitoring.render_alertmanager(url))
    return subprocess.run([amtool, "check-config", str(tmp_path / "am.yml")], capture_output=True).returncode == 0


def _operation_accepts(tmp_path, url: str) -> bool:
    (tmp_path / "url").write_text(url + "\n")
    state = FakeState()
    with ctx_state.use(state), ctx_host.use(create_host(state, facts={})):
        try:
            next(iter(monitoring.alertmanager._inner(webhook_url_file=str(tmp_path / "url"))))
        except OperationValueError as exc:
            assert "alertmanager_webhook_url_file" in str(exc) and url not in str(exc)
            return False
        except KeyError as exc:  # past the check: the first fact this test does not give
            assert "Missing test fact" in str(exc)
            return True
    return True


@pytest.mark.parametrize("url", GO_REFUSES)
def test_a_url_go_refuses_is_refused_by_the_operation(url, amtool, tmp_path):
    assert not _amtool_accepts(amtool, tmp_path, url)
    assert not _operation_accepts(tmp_path, url)


@pytest.mark.parametrize("url", ACCEPTED)
def test_a_url_amtool_loads_is_accepted(url, amtool, tmp_path):
    assert _amtool_accepts(amtool, tmp_path, url)
    assert _operation_accepts(tmp_path, url)


def test_a_url_with_a_port_that_is_not_a_number_is_refused_when_the_fleet_loads(tmp_path):
    secret = "http://alert-sink.example.internal:abc/hooks/gpufleet?token=TESTwebhookTOKEN0002"
    (tmp_path / "url").write_text(secret + "\n")
    with pytest.raises(SettingsError) as refused:
        load_fleet(PROD, {"alertmanager_webhook_url_file": str(tmp_path / "url")}, cwd=str(PROJECT_ROOT))
    issues = [i for i in refused.value.issues if i.key == "alertmanager_webhook_url_file"]
    assert issues and "the port is not a number" in issues[0].expected
    assert "TESTwebhookTOKEN" not in str(refused.value)
    # A good URL loads.
    load_fleet(PROD, {"alertmanager_webhook_url_file": str(WEBHOOK_FILE)}, cwd=str(PROJECT_ROOT))
