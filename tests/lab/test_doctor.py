"""`gpufleet doctor` on the lab: silent on a clean lab, and each injected fault found on the node it
was injected on, with the finding that names it. Every fault is put back before the next test."""

from __future__ import annotations

import json

import pytest

from tests.lab.conftest import deploy, gpufleet

NODE = "gpu-node-2"
GPUS_JSON = "/etc/gpufleet-lab/gpus.json"
DRIVER_VERSION = "/run/gpufleet-lab/nvidia/version"
REPLICA = f"vllm-{NODE}-vllm-0"
PINNED = "580.95.05"


def doctor(*args: str) -> tuple[int, dict]:
    run = gpufleet("doctor", "inventory/lab.py", "--json", *args, check=False, timeout=600)
    return run.returncode, json.loads(run.stdout)


def findings(report: dict, host: str) -> list[str]:
    return [f["id"] for n in report["nodes"] if n["host"] == host for f in n["findings"]]


def serving_again(node) -> None:
    """The node's replica, Milvus and RAG app answer again (after a restart of their containers)."""
    for url in (f"http://{NODE}:8000/health", f"http://{NODE}:9091/healthz", f"http://{NODE}:8080/health"):
        out = node.run(f"for i in $(seq 1 300); do curl -fsS -m 2 {url} >/dev/null && exit 0; sleep 1; done; exit 1")
        assert out.rc == 0, f"{url} does not answer again"


@pytest.fixture(scope="module")
def clean(deployed, hosts):
    result = deploy()
    assert result["rc"] == 0, result["stderr"][-3000:]
    return hosts


def test_a_clean_lab_has_no_findings_and_the_report_is_redacted(clean, tmp_path):
    report_file = tmp_path / "doctor.md"
    code, report = doctor("--report", str(report_file))
    assert code == 0, report
    assert report["unhealthy"] == [] and report["unchecked"] == []
    text = report_file.read_text()
    assert "gpu-node-" not in text and "lb-1" not in text  # host names redacted from the paste-ready file
    ip = clean[NODE].run(f"getent ahostsv4 {NODE} | awk 'NR==1 {{print $1}}'").stdout.strip()
    assert ip and ip not in text


def _sed_driver(node, old: str, new: str) -> None:
    assert node.run(f"sed -i 's/{old}/{new}/' {DRIVER_VERSION}").rc == 0


def _gpus(node, python: str) -> None:
    assert node.run(f"cp {GPUS_JSON} /root/gpus.json.doctor && python3 -c \"import json;p='{GPUS_JSON}';"
                    f"g=json.load(open(p));{python};json.dump(g,open(p,'w'))\"").rc == 0


# (id, inject, the finding doctor must report on NODE, put back)
FAULTS = [
    ("driver-not-loaded", lambda n: n.run("systemctl stop nvidia-standin-driver"), "driver.not-loaded",
     lambda n: n.run("systemctl start nvidia-standin-driver")),
    ("driver-installed-not-loaded", lambda n: _sed_driver(n, PINNED, "575.57.08"), "driver.reboot-pending",
     lambda n: _sed_driver(n, "575.57.08", PINNED)),
    ("gpu-fallen-off", lambda n: _gpus(n, "g=g[:1]"), "gpu.missing",
     lambda n: n.run(f"mv /root/gpus.json.doctor {GPUS_JSON}")),
    ("gpu-throttled", lambda n: _gpus(n, "g[1]['throttle']='0x0000000000000040'"), "throughput.throttling",
     lambda n: n.run(f"mv /root/gpus.json.doctor {GPUS_JSON}")),
    ("replica-container-gone", lambda n: n.run(f"docker rename {REPLICA} {REPLICA}-moved"), "replica.missing",
     lambda n: n.run(f"docker rename {REPLICA}-moved {REPLICA}")),
]


@pytest.mark.parametrize(("inject", "expected", "repair"), [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS])
def test_a_fault_is_found_on_its_node(clean, inject, expected, repair):
    node = clean[NODE]
    inject(node)
    try:
        code, report = doctor()
        assert code == 2, report
        assert report["unhealthy"] == [NODE], report["unhealthy"]
        assert expected in findings(report, NODE), findings(report, NODE)
    finally:
        repair(node)
    assert doctor("--limit", NODE)[0] == 0


def test_secure_boot_refusing_the_module_is_named(clean):
    from gpufleet.lab.faults import secure_boot

    node = clean[NODE]
    secure_boot(NODE, True)
    node.run("systemctl stop nvidia-standin-driver")
    try:
        code, report = doctor("--limit", NODE)
        assert code == 2 and "driver.secure-boot" in findings(report, NODE), report
    finally:
        secure_boot(NODE, False)
        node.run("systemctl start nvidia-standin-driver")
    assert doctor("--limit", NODE)[0] == 0


def test_a_stopped_replica_is_found_with_its_state_and_docker_down_first(clean):
    """Two faults on one node, one recovery (a replica start costs a minute here): the replica
    stopped (replica.exited), then Docker itself down, which doctor names first. Docker comes back,
    then the replica (``unless-stopped`` keeps a stopped container stopped over Docker's restart)."""
    node = clean[NODE]
    assert node.run(f"docker stop -t 60 {REPLICA}").rc == 0
    try:
        code, report = doctor("--limit", NODE)
        assert code == 2 and "replica.exited" in findings(report, NODE), report
        assert node.run("systemctl stop docker.socket docker").rc == 0
        code, report = doctor("--limit", NODE)
        assert code == 2 and findings(report, NODE)[:1] == ["docker.down"], report
    finally:
        assert node.run("systemctl start docker").rc == 0
        assert node.run(f"docker start {REPLICA}").rc == 0
        serving_again(node)
    assert doctor("--limit", NODE)[0] == 0
