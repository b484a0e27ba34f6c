"""The lab itself: stand-in hosts that behave like machines, and its support services."""

import json

from tests.lab.conftest import gpufleet


def test_every_host_boots_systemd_and_sshd_with_its_own_host_key(lab, hosts):
    keys = set()
    for name, host in hosts.items():
        assert host.run("hostname").stdout.strip() == name
        assert host.run("systemctl is-system-running").stdout.strip() in ("running", "degraded")
        assert host.service("ssh").is_running
        keys.add(host.file("/etc/ssh/ssh_host_ed25519_key.pub").content_string.split()[1])
    assert len(keys) == len(hosts), "hosts share an SSH host key"


def test_status_reports_every_host_and_service_running(lab):
    status = gpufleet("lab", "status", "--json", check=False)
    assert status.returncode == 0, status.stdout
    report = json.loads(status.stdout)
    assert {h["name"] for h in report["hosts"]} == {"gpu-node-1", "gpu-node-2", "lb-1"}
    assert {s["state"] for s in report["services"]} == {"running"}


def test_second_up_adopts_the_running_lab(lab):
    again = gpufleet("lab", "up", "--nodes", "2", "--lbs", "1")
    assert again.stderr.count(": adopted") == 3, again.stderr
    assert "debootstrap" not in again.stderr


def test_lab_apt_repository_is_signed_and_carries_the_pinned_versions(hosts):
    node = hosts["gpu-node-1"]
    base = "http://lab-repo/compute/cuda/repos/debian12/x86_64"
    verify = node.run(
        f"cd /tmp && curl -fsS -o key.asc {base}/gpufleet-lab.pub && curl -fsS -o InRelease {base}/InRelease"
        " && gpg --dearmor < key.asc > key.gpg && gpgv --keyring ./key.gpg InRelease"
    )
    assert verify.rc == 0, verify.stderr
    packages = node.run(f"curl -fsS {base}/Packages").stdout
    versions = {}
    for stanza in packages.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line)
        versions.setdefault(fields["Package"], set()).add(fields["Version"])
    assert "2.27.7-1+cuda12.9" in versions["libnccl2"] and len(versions["libnccl2"]) >= 2
    assert "2.27.7-1+cuda12.9" in versions["libnccl-dev"] and len(versions["libnccl-dev"]) >= 2
    assert "580.95.05-1" in versions["nvidia-open"] and len(versions["nvidia-open"]) >= 2
    assert "1.17.8-1" in versions["nvidia-container-toolkit"] and len(versions["nvidia-container-toolkit"]) >= 2


def test_lab_registry_serves_the_hosts(hosts):
    answer = hosts["lb-1"].run("curl -fsS -o /dev/null -w '%{http_code}' http://lab-registry:5000/v2/")
    assert answer.stdout == "200"


def test_stand_in_gpus_follow_the_lab_data(hosts):
    gpus = json.loads(hosts["gpu-node-2"].file("/etc/gpufleet-lab/gpus.json").content_string)
    assert [g["name"] for g in gpus] == ["NVIDIA GeForce RTX 5090"] * 2
    assert {g["compute_capability"] for g in gpus} == {"12.0"} and gpus[0]["memory_mib"] == 32607
    assert json.loads(hosts["lb-1"].file("/etc/gpufleet-lab/gpus.json").content_string) == []
