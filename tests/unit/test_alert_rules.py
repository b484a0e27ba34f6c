"""The alert rules (files/prometheus/alerts.yml) under promtool, and the script that installs them.

promtool is Debian's `prometheus` package (.ci/run installs it). Without it these tests fail: an
alerting change that nobody tested must not pass as a skip.
"""

import json
import re
import shutil
import subprocess

import pytest
import yaml

from gpufleet import PROJECT_ROOT, deploy_args
from gpufleet.drift import DriftReport, HostDrift, write_prometheus
from gpufleet.fleet import load_fleet
from operations import monitoring

PROM = PROJECT_ROOT / "files" / "prometheus"
RULES = PROM / "alerts.yml"
RULES_TEST = PROM / "alerts_test.yml"
PROD = str(PROJECT_ROOT / "inventory" / "prod.py")


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found on PATH: install Debian's `prometheus` package "
                    "(apt-get install -y prometheus), as .ci/run does")
    return path


def run(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, cwd=cwd)


def alerts() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]


# --- promtool ------------------------------------------------------------------------------------

def test_rules_pass_promtool_check_rules(promtool):
    out = run(promtool, "check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in out.stdout


def test_rules_pass_their_promtool_unit_tests(promtool):
    out = run(promtool, "test", "rules", str(RULES_TEST))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_harness_fails_a_test_that_expects_an_alert_which_must_not_fire(promtool, tmp_path):
    # A healthy replica: expecting VllmReplicaDown must make `promtool test rules` exit non-zero.
    bad = {"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": 'up{job="vllm",instance="gpu-node-1:8000",replica="r",node="gpu-node-1"}',
                          "values": "1x15"}],
        "alert_rule_test": [{"eval_time": "10m", "alertname": "VllmReplicaDown", "exp_alerts": [
            {"exp_labels": {"severity": "warning", "job": "vllm", "instance": "gpu-node-1:8000",
                            "replica": "r", "node": "gpu-node-1"}}]}]}]}
    (tmp_path / "must_fail_test.yml").write_text(yaml.safe_dump(bad))
    out = run(promtool, "test", "rules", str(tmp_path / "must_fail_test.yml"))
    assert out.returncode != 0
    assert "FAILED" in out.stdout + out.stderr and "VllmReplicaDown" in out.stdout + out.stderr


def test_a_weakened_threshold_fails_the_unit_tests(promtool, tmp_path):
    # The tests pin the boundaries: at 80% the 85%-full replica would page too.
    text = RULES.read_text()
    assert text.count('job="vllm"}) > 0.9') == 1
    (tmp_path / "alerts.yml").write_text(text.replace('job="vllm"}) > 0.9', 'job="vllm"}) > 0.8'))
    shutil.copy(RULES_TEST, tmp_path / "alerts_test.yml")
    out = run(promtool, "test", "rules", str(tmp_path / "alerts_test.yml"))
    assert out.returncode != 0 and "VllmKvCacheNearlyFull" in out.stdout + out.stderr


def test_a_broken_expression_fails_check_rules(promtool, tmp_path):
    broken = tmp_path / "alerts.yml"
    broken.write_text(RULES.read_text().replace("expr: up{job=\"vllm\"} == 0", "expr: up{job=\"vllm\"} ==", 1))
    out = run(promtool, "check", "rules", str(broken))
    assert out.returncode != 0 and "parse error" in out.stdout + out.stderr


def test_rendered_config_and_rules_pass_promtool_check_config(promtool, tmp_path):
    fleet = load_fleet(PROD, cwd=str(PROJECT_ROOT))
    (tmp_path / "prometheus.yml").write_text(monitoring.render_prometheus(**deploy_args.prometheus_args(fleet, "lb-01")))
    shutil.copy(RULES, tmp_path / monitoring.RULES_NAME)
    out = run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 rule files found" in out.stdout


# --- the rules' shape and the names they read -----------------------------------------------------

def test_every_alert_has_a_severity_a_runbook_and_a_unit_test():
    tested = {t["alertname"] for case in yaml.safe_load(RULES_TEST.read_text())["tests"]
              for t in case["alert_rule_test"] if t.get("exp_alerts")}
    for rule in alerts():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
        assert rule["alert"] in tested, f"{rule['alert']}: no promtool case where it fires"


def test_rules_read_the_scrape_jobs_prometheus_yml_defines():
    fleet = load_fleet(PROD, cwd=str(PROJECT_ROOT), overrides={"alertmanager_webhook_url_file": str(WEBHOOK_FILE)})
    config = yaml.safe_load(monitoring.render_prometheus(**deploy_args.prometheus_args(fleet, "lb-01")))
    jobs = {j["job_name"] for j in config["scrape_configs"]}
    assert config["rule_files"] == [monitoring.RULES_NAME]
    assert jobs == {"prometheus", "alertmanager", "vllm", "dcgm", "gpu_monitor", "milvus", "node"}
    used = set()
    for rule in alerts():
        used |= set(re.findall(r'job="([^"]+)"', rule["expr"]))
        for alternatives in re.findall(r'job=~"([^"]+)"', rule["expr"]):
            used |= set(alternatives.split("|"))
    assert used and used <= jobs, used - jobs


def metric_names(prefix: str) -> set[str]:
    names = set()
    for rule in alerts():
        names |= set(re.findall(rf"\b({prefix}[A-Za-z0-9_:]*)", rule["expr"]))
    return names


def test_drift_metric_names_are_those_gpufleet_drift_writes(tmp_path):
    prom = tmp_path / "drift.prom"
    write_prometheus(DriftReport([HostDrift("a")], started=1.0, duration=1.0), str(prom))
    written = set(re.findall(r"^# TYPE (\S+) ", prom.read_text(), re.M))
    used = metric_names("gpufleet_drift_")
    assert used == {"gpufleet_drift_operations", "gpufleet_drift_host_unchecked",
                    "gpufleet_drift_last_run_timestamp_seconds"}
    assert used <= written


def test_gpu_metric_names_are_those_gpu_monitor_and_dcgm_export():
    spec = PROJECT_ROOT / "files" / "gpu_monitor.py"
    source = spec.read_text()
    gauges = {"gpufleet_gpu_" + name for name in re.findall(r'^\s+\("([a-z_]+)", "', source, re.M)}
    exported = gauges | set(re.findall(r'Gauge\("(gpufleet_nvml_[a-z_]+)"', source))
    used = metric_names("gpufleet_gpu_") | metric_names("gpufleet_nvml_")
    assert {"gpufleet_gpu_throttle_reasons", "gpufleet_gpu_xid_errors_total", "gpufleet_gpu_last_xid"} <= used
    assert used <= exported, used - exported
    counters = (PROJECT_ROOT / "files" / "dcgm" / "counters.csv").read_text()
    fields = set(re.findall(r"^(DCGM_FI_[A-Z0-9_]+),", counters, re.M))
    dcgm = metric_names("DCGM_FI_")
    assert dcgm == {"DCGM_FI_DEV_XID_ERRORS"} and dcgm <= fields


# --- the install script: check, swap, reload, roll back (promtool real, systemd and curl faked) ---

FAKES = {
    # systemctl: record the call; succeed.
    "systemctl": 'echo "systemctl $*" >> "$FAKE_LOG"\n',
    # curl: Prometheus's /metrics with the reload result the test chose.
    "curl": 'echo "prometheus_config_last_reload_successful $FAKE_RELOAD_OK"\n'
            'echo "prometheus_config_last_reload_success_timestamp_seconds $(date +%s)"\n',
    "sleep": "exit 0\n",
}


def run_script(tmp_path, promtool, *, config: str | None, rules: str | None, reload_ok: int,
               live_config: str = "old config\n", live_rules: str | None = "groups: []\n"):
    etc = tmp_path / "etc"
    etc.mkdir()
    fakes = tmp_path / "bin"
    fakes.mkdir()
    for name, body in FAKES.items():
        (fakes / name).write_text("#!/bin/sh\n" + body)
        (fakes / name).chmod(0o755)
    (fakes / "promtool").symlink_to(promtool)
    (etc / "prometheus.yml").write_text(live_config)
    if live_rules is not None:
        (etc / monitoring.RULES_NAME).write_text(live_rules)
    if config is not None:
        (etc / "prometheus.yml.gpufleet-new").write_text(config)
    if rules is not None:
        (etc / f"{monitoring.RULES_NAME}.gpufleet-new").write_text(rules)
    script = monitoring.prometheus_script(9090, restart=False, test_new=config is not None, rules=rules is not None)
    assert script.count("/etc/prometheus/") > 5
    script = script.replace("/etc/prometheus/", f"{etc}/")
    env = {"PATH": f"{fakes}:/usr/bin:/bin", "FAKE_LOG": str(tmp_path / "log"), "FAKE_RELOAD_OK": str(reload_ok)}
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60, env=env)
    log = (tmp_path / "log").read_text() if (tmp_path / "log").exists() else ""
    return out, etc, log


CONFIG = 'global:\n  scrape_interval: 15s\nrule_files:\n  - "gpufleet-alerts.yml"\nscrape_configs: []\n'


def test_script_installs_checked_rules_and_config_and_reloads(promtool, tmp_path):
    out, etc, log = run_script(tmp_path, promtool, config=CONFIG, rules=RULES.read_text(), reload_ok=1,
                               live_rules=None)
    assert out.returncode == 0, out.stderr
    assert (etc / "prometheus.yml").read_text() == CONFIG
    assert (etc / monitoring.RULES_NAME).read_text() == RULES.read_text()
    assert sorted(p.name for p in etc.iterdir()) == ["gpufleet-alerts.yml", "prometheus.yml"]
    assert log == "systemctl reload-or-restart prometheus\n"


def test_script_refuses_broken_rules_and_leaves_the_live_files(promtool, tmp_path):
    out, etc, log = run_script(tmp_path, promtool, config=CONFIG, rules="groups:\n- name: x\n  rules:\n  - alert: A\n    expr: up ==\n",
                               reload_ok=1)
    assert out.returncode == 1
    assert "promtool rejects the new rules" in out.stderr
    assert (etc / "prometheus.yml").read_text() == "old config\n"
    assert (etc / monitoring.RULES_NAME).read_text() == "groups: []\n"
    assert sorted(p.name for p in etc.iterdir()) == ["gpufleet-alerts.yml", "prometheus.yml"] and log == ""


def test_script_checks_a_new_config_with_the_rules_it_will_load(promtool, tmp_path):
    # Rules unchanged and absent on the host: the config names a file that is not there.
    out, etc, log = run_script(tmp_path, promtool, config=CONFIG, rules=None, reload_ok=1, live_rules=None)
    assert out.returncode == 1 and "promtool rejects the new config" in out.stderr
    assert (etc / "prometheus.yml").read_text() == "old config\n" and log == ""


def test_script_rolls_back_both_files_when_the_reload_fails(promtool, tmp_path):
    out, etc, log = run_script(tmp_path, promtool, config=CONFIG, rules=RULES.read_text(), reload_ok=0,
                               live_rules=None)
    assert out.returncode == 1 and "rolling back" in out.stderr
    assert (etc / "prometheus.yml").read_text() == "old config\n"
    assert sorted(p.name for p in etc.iterdir()) == ["prometheus.yml"]  # no rules before: none after
    assert log == "systemctl reload-or-restart prometheus\n" * 2


# --- Alertmanager: off by default, one webhook receiver from a secret file -------------------------

WEBHOOK_FILE = PROJECT_ROOT / "tests" / "fixtures" / "prometheus" / "webhook-url"


def test_alertmanager_is_off_by_default_and_prometheus_sends_nowhere():
    fleet = load_fleet(PROD, cwd=str(PROJECT_ROOT))
    assert deploy_args.alertmanager_args(fleet, "lb-01")["webhook_url_file"] is None
    config = yaml.safe_load(monitoring.render_prometheus(**deploy_args.prometheus_args(fleet, "lb-01")))
    assert "alerting" not in config and "alertmanager" not in {j["job_name"] for j in config["scrape_configs"]}


def test_prometheus_sends_to_the_local_alertmanager_when_a_webhook_is_configured(promtool, tmp_path):
    fleet = load_fleet(PROD, cwd=str(PROJECT_ROOT), overrides={"alertmanager_webhook_url_file": str(WEBHOOK_FILE)})
    assert deploy_args.alertmanager_args(fleet, "lb-01")["webhook_url_file"] == str(WEBHOOK_FILE)
    text = monitoring.render_prometheus(**deploy_args.prometheus_args(fleet, "lb-01"))
    config = yaml.safe_load(text)
    assert config["alerting"] == {"alertmanagers": [{"static_configs": [{"targets": ["127.0.0.1:9093"]}]}]}
    (tmp_path / "prometheus.yml").write_text(text)
    shutil.copy(RULES, tmp_path / monitoring.RULES_NAME)
    out = run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_alertmanager_config_has_the_webhook_and_passes_amtool(tmp_path):
    url = "https://hooks.example.internal/alert?token=abc&channel=\"gpu\""
    text = monitoring.render_alertmanager(url, group_wait="5s", group_interval="10s")
    config = yaml.safe_load(text)
    assert (config["route"]["group_wait"], config["route"]["group_interval"]) == ("5s", "10s")
    default = yaml.safe_load(monitoring.render_alertmanager(url))["route"]
    assert (default["group_wait"], default["group_interval"]) == ("30s", "5m")
    assert config["receivers"] == [{"name": "webhook", "webhook_configs": [{"url": url, "send_resolved": True}]}]
    assert config["route"]["receiver"] == "webhook"
    amtool = shutil.which("amtool")
    assert amtool, "amtool not found: install Debian's `prometheus-alertmanager` package (.ci/run does)"
    (tmp_path / "alertmanager.yml").write_text(text)
    out = run(amtool, "check-config", str(tmp_path / "alertmanager.yml"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 inhibit rules" in out.stdout and "1 receivers" in out.stdout


def test_alertmanager_commands_never_carry_the_webhook_url():
    secret = WEBHOOK_FILE.read_text().strip()
    cases = PROJECT_ROOT / "tests" / "operations" / "monitoring.alertmanager"
    for case in cases.glob("*.json"):
        data = json.loads(case.read_text())
        text = json.dumps(data["commands"]) + json.dumps(data.get("exception", {})) + data.get("noop_description", "")
        assert secret not in text and "TESTwebhookTOKEN" not in text, case.name


# --- alert_hold_for: a fleet's own hold times ---------------------------------------------------

def test_hold_for_replaces_only_the_named_alerts_for_and_passes_promtool(promtool, tmp_path):
    tuned = monitoring.alert_rules({"VllmReplicaDown": "30s", "GpuNvmlDown": "1h30m"})
    by_name = {r["alert"]: r for g in yaml.safe_load(tuned)["groups"] for r in g["rules"] if "alert" in r}
    shipped = {r["alert"]: r for r in alerts()}
    assert by_name["VllmReplicaDown"]["for"] == "30s" and by_name["GpuNvmlDown"]["for"] == "1h30m"
    # Everything else is the shipped file: same rules, same expressions, same other hold times.
    assert by_name.keys() == shipped.keys()
    for name, rule in shipped.items():
        if name not in ("VllmReplicaDown", "GpuNvmlDown"):
            assert by_name[name] == rule, name
    path = tmp_path / "alerts.yml"
    path.write_text(tuned)
    out = run(promtool, "check", "rules", str(path))
    assert out.returncode == 0, out.stdout + out.stderr


def test_hold_for_reaches_the_prometheus_operation():
    fleet = load_fleet(PROD, {"alert_hold_for": {"VllmReplicaDown": "2m"}})
    args = deploy_args.prometheus_args(fleet, fleet.load_balancers[0].name)
    down = args["rules"].split("alert: VllmReplicaDown")[1].split("- alert:")[0]
    assert re.search(r"^\s*for: 2m$", down, re.M)
    # Without the key: the operation's default, the shipped file byte for byte (no new rules on every lb).
    assert "rules" not in deploy_args.prometheus_args(load_fleet(PROD), fleet.load_balancers[0].name)


@pytest.mark.parametrize("hold_for, expected", [
    ({"VllmReplicaDwn": "1m"}, "is not an alert with a `for:`"),
    ({"GpuXidFatal": "1m"}, "is not an alert with a `for:`"),  # fires at once: nothing to tune
    ({"VllmReplicaDown": "5 minutes"}, "is not a Prometheus duration"),
    ({"VllmReplicaDown": ""}, "is not a Prometheus duration"),
    ({"VllmReplicaDown": "30s5m"}, "is not a Prometheus duration"),  # promtool: "not a valid duration string"
    ({"VllmReplicaDown": "1m1m"}, "is not a Prometheus duration"),
])
def test_hold_for_refuses_what_prometheus_would_not_load(hold_for, expected):
    from gpufleet.settings import SettingsError

    with pytest.raises(SettingsError) as refused:
        load_fleet(PROD, {"alert_hold_for": hold_for})
    issues = [i for i in refused.value.issues if i.key == "alert_hold_for"]
    assert issues and expected in issues[0].expected


@pytest.mark.parametrize("key, arg, default", [("alertmanager_group_wait", "group_wait", "30s"),
                                               ("alertmanager_group_interval", "group_interval", "5m")])
def test_alertmanager_waits_reach_the_operation_and_bad_values_are_refused(key, arg, default):
    from gpufleet.settings import SettingsError

    lb = load_fleet(PROD).load_balancers[0].name
    assert deploy_args.alertmanager_args(load_fleet(PROD, {key: "10s"}), lb)[arg] == "10s"
    assert deploy_args.alertmanager_args(load_fleet(PROD), lb)[arg] == default
    with pytest.raises(SettingsError) as refused:
        load_fleet(PROD, {key: "10 s"})
    issues = [i for i in refused.value.issues if i.key == key]
    assert issues and "is not a Prometheus duration" in issues[0].expected and issues[0].value == "10 s"


def test_a_zero_group_interval_is_refused_before_amtool_would_and_a_zero_group_wait_is_not():
    from gpufleet.settings import SettingsError

    with pytest.raises(SettingsError) as refused:
        load_fleet(PROD, {"alertmanager_group_interval": "0m"})
    issues = [i for i in refused.value.issues if i.key == "alertmanager_group_interval"]
    assert issues and "above zero" in issues[0].expected and issues[0].value == "0m"
    lb = load_fleet(PROD).load_balancers[0].name
    assert deploy_args.alertmanager_args(load_fleet(PROD, {"alertmanager_group_wait": "0s"}), lb)["group_wait"] == "0s"
