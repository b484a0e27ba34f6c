"""Drift reporting: causes from commands, secrets never shown, exit codes, metrics and JUnit."""

import io
import xml.etree.ElementTree as ET

from pyinfra.api import StringCommand
from pyinfra.api.command import FileUploadCommand

from gpufleet.drift import DriftItem, DriftReport, HostDrift, describe_command, write_junit, write_prometheus


class FakeHost:
    name = "gpu-node-2"

    def __init__(self, files):
        self.files = files

    def get_fact(self, fact, path):
        return self.files.get(path)


def test_managed_file_drift_is_shown_as_a_diff():
    host = FakeHost({"/etc/modprobe.d/x.conf": ["blacklist nouveau", "options nouveau modeset=1"]})
    line, details = describe_command(host, FileUploadCommand(io.StringIO("blacklist nouveau\noptions nouveau modeset=0\n"),
                                                             "/etc/modprobe.d/x.conf"))
    assert line == "/etc/modprobe.d/x.conf: content differs"
    assert "-options nouveau modeset=1" in details and "+options nouveau modeset=0" in details


def test_secret_files_are_never_diffed():
    host = FakeHost({"/etc/gpufleet/hf-token": ["hf_oldsecretvalue"]})
    line, details = describe_command(host, FileUploadCommand(io.StringIO("hf_newsecretvalue"), "/etc/gpufleet/hf-token"))
    assert "secret, not shown" in line and details == []
    assert "hf_" not in line


def test_commands_are_masked_and_truncated():
    line, _ = describe_command(None, StringCommand("apt-get install " + "x" * 1000))
    assert line.endswith(" ...") and len(line) < 420


def report(*hosts):
    return DriftReport(list(hosts), started=1_700_000_000.0, duration=2.5)


def test_exit_codes_clean_drift_and_not_checked():
    clean = HostDrift("a")
    drifted = HostDrift("b", items=[DriftItem("plan", "Base packages", "apt-get install jq")])
    down = HostDrift("c", reachable=False, error="unreachable over SSH")
    assert report(clean).exit_code == 0
    assert report(clean, drifted).exit_code == 2
    assert report(clean, drifted, down).exit_code == 1  # could not check everything
    data = report(clean, drifted, down).as_dict()
    assert data["drifted_hosts"] == ["b"] and data["unchecked_hosts"] == ["c"]


def test_prometheus_textfile_and_junit(tmp_path):
    r = report(HostDrift("a"), HostDrift("b", items=[DriftItem("runtime", "gpus", "1 GPUs visible, expected 2")]),
               HostDrift("c", reachable=False, error="unreachable over SSH"))
    prom = tmp_path / "drift.prom"
    write_prometheus(r, str(prom))
    text = prom.read_text()
    assert 'gpufleet_drift_operations{host="b"} 1.0' in text
    assert 'gpufleet_drift_host_unchecked{host="c"} 1.0' in text
    assert "gpufleet_drift_last_run_timestamp_seconds 1.7e+09" in text
    junit = tmp_path / "drift.xml"
    write_junit(r, str(junit))
    suite = ET.parse(junit).getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "1", "1")
    failure = suite.find("testcase[@name='b']/failure")
    assert failure is not None and "expected 2" in failure.get("message")


class PackagesHost:
    """A host whose package lists say what `apt-cache policy` would (the fact's parsed answer)."""

    name = "lb-1"
    groups = ("lb",)

    def __init__(self, policy):
        self.policy = policy
        self.asked = []

    def get_fact(self, fact, packages):
        self.asked.append(packages)
        return {name: self.policy[name] for name in packages if name in self.policy}


def test_a_superseded_distro_build_is_a_security_finding_of_its_own():
    from gpufleet.runtime_checks import security_updates
    from gpufleet.settings import HostSettings

    settings = HostSettings(lb_nginx_min_version="1.22.1-9+deb12u11", prometheus_min_version="2.42.0+ds-5+deb12u1")
    host = PackagesHost({"nginx": {"installed": "1.22.1-9+deb12u11", "candidate": "1.22.1-9+deb12u12"},
                         "prometheus": {"installed": "2.42.0+ds-5+deb12u1", "candidate": "2.42.0+ds-5+deb12u1"}})
    [item] = security_updates(host, settings, fleet=None)
    assert host.asked == [["nginx", "prometheus"]]
    assert (item.kind, item.check) == ("security", "package nginx")
    assert "1.22.1-9+deb12u11 installed" in item.cause and "1.22.1-9+deb12u12" in item.cause

    report = DriftReport([HostDrift("lb-1", items=[item])], started=0.0)
    assert report.exit_code == 2


def test_security_findings_have_their_own_metric(tmp_path):
    report = DriftReport([HostDrift("lb-1", items=[DriftItem("security", "package nginx", "behind"),
                                                   DriftItem("plan", "nginx", "would change")]),
                          HostDrift("gpu-node-1")], started=1.0)
    path = tmp_path / "drift.prom"
    write_prometheus(report, str(path))
    text = path.read_text()
    assert 'gpufleet_drift_security_updates{host="lb-1"} 1.0' in text
    assert 'gpufleet_drift_security_updates{host="gpu-node-1"} 0.0' in text
