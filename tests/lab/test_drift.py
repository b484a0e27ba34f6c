"""Nightly drift on the lab: a catalog of injected drifts, each found on the right host with the
right cause; clean means exit 0; an unreachable host means exit 1 with the others still checked;
and drift itself never changes a host."""

from __future__ import annotations


import pytest

from tests.lab.conftest import NODE, assert_only_drifted, causes, deploy, drift

GPUS_JSON = "/etc/gpufleet-lab/gpus.json"


def test_clean_lab_reports_nothing_and_exits_0(converged):
    code, report = drift()
    assert code == 0 and report["ok"] is True
    assert report["drifted_hosts"] == [] and all(h["drift"] == [] for h in report["hosts"])


def test_the_nccl_check_runs_once_per_container_run(converged):
    """A drift after a drift asks no replica that was checked already (operations/nccl_checks.py; a
    container restarted or recreated since is asked again: tests/unit/test_docker_facts.py)."""
    node = converged[NODE]

    def checks_since(since: str) -> list[str]:
        out = node.run(f"docker events --since {since} --until $(date +%s) --filter event=exec_start "
                       "--format '{{.Actor.Attributes.name}} {{.Action}}'").stdout
        return [line for line in out.splitlines() if "vllm_nccl_check" in line]

    since = node.run("date +%s").stdout.strip()
    assert drift()[0] == 0
    assert checks_since(since) == []  # the clean drift before this test asked already


# Drifts that a deploy of the node puts back, injected together: one drift run finds them all, one
# deploy repairs them all (each case alone cost a drift, a deploy and a drift: ~20 s here, minutes
# on a slow CI machine). Each still has its own test and its own cause; none hides another (two
# changes to one container would, so the Milvus container's other drift is a case of its own below,
# and so would three changes to the NCCL pin's packages: the cause shows the first command).
TOGETHER = [
    ("managed-file-edited", "sed -i 's/modeset=0/modeset=1/' /etc/modprobe.d/gpufleet-blacklist-nouveau.conf",
     "Blacklist nouveau: /etc/modprobe.d/gpufleet-blacklist-nouveau.conf: content differs"),
    ("nccl-pin-removed", "rm /etc/apt/preferences.d/gpufleet-nccl",
     "NCCL pin on the host: /etc/apt/preferences.d/gpufleet-nccl: missing"),
    ("unit-disabled", "systemctl disable nvidia-persistenced",
     "NVIDIA persistence daemon: systemctl enable nvidia-persistenced"),
    # The plain deploy that drift plans refuses to recreate a running Milvus (operations/milvus.py):
    # the cause is that refusal, which names the container.
    ("container-recreated-with-another-flag",
     "img=$(docker inspect --format '{{.Config.Image}}' milvus-standalone); docker rm -f milvus-standalone && "
     "docker run -d --name milvus-standalone --restart no \"$img\" milvus run standalone",
     "would recreate milvus-standalone while it serves"),
]


@pytest.fixture(scope="module")
def together(converged):
    """The drift report with every TOGETHER drift injected on NODE; NODE is repaired (one deploy)
    and drift-clean again before any test reads it."""
    target = converged[NODE]
    try:
        for case_id, inject, _ in TOGETHER:
            injected = target.run(inject)
            assert injected.rc == 0, (case_id, injected.stderr)
        found = drift()
    finally:
        fixed = deploy("--limit", NODE, "--data", "allow_serving_disruption=true")
        assert fixed["rc"] == 0, fixed["stderr"][-2000:]
    code, report = drift()
    assert code == 0, report
    return found


@pytest.mark.parametrize("expected", [c[2] for c in TOGETHER], ids=[c[0] for c in TOGETHER])
def test_drifts_injected_together_are_each_found_with_their_cause(together, expected):
    code, report = together
    assert code == 2 and report["drifted_hosts"] == [NODE], report
    found = causes(report, NODE)
    assert any(expected in c for c in found), found


# One at a time: (id, host, inject, expected text in one cause, how to put it back: None = a deploy
# of that host; "drain" = stop its GPU containers first: the deploy refuses to reinstall the driver
# under them)
DRAIN = "docker stop $(docker ps -q --filter label=io.gpufleet.spec --filter name=^vllm- --filter name=^dcgm-)"
CATALOG = [
    ("package-downgraded", NODE,
     "apt-get install -y -q --allow-downgrades --allow-change-held-packages "
     "libnccl2=2.27.3-1+cuda12.9 libnccl-dev=2.27.3-1+cuda12.9",
     "NCCL pin on the host: ", None),
    ("hold-removed", NODE, "apt-mark unhold libnccl2", "NCCL pin on the host: apt-mark hold libnccl2", None),
    # Put back as it was (Docker never reread it): a deploy's repair restarts Docker, which
    # test_gpu_stack.py's daemon.json test does already.
    ("nvidia-runtime-removed", NODE,
     "cp -p /etc/docker/daemon.json /root/daemon.json.bak && "
     "python3 -c \"import json;p='/etc/docker/daemon.json';d=json.load(open(p));d.pop('runtimes');"
     "json.dump(d,open(p,'w'))\"",
     "Docker daemon.json: nvidia runtime: /etc/docker/daemon.json: content differs",
     "mv /root/daemon.json.bak /etc/docker/daemon.json"),
    ("container-stopped", NODE, "docker stop milvus-standalone", "docker start milvus-standalone", None),
    ("another-image-under-the-pinned-tag", NODE,
     "img=$(docker inspect --format '{{.Config.Image}}' milvus-standalone); "
     "docker tag \"$img\" gpufleet-test/milvus-original:1 && "
     "docker tag \"$(docker inspect --format '{{.Config.Image}}' rag-app)\" \"$img\"",
     "another image under the pinned tag",
     "img=$(docker inspect --format '{{.Config.Image}}' milvus-standalone); "
     "docker tag gpufleet-test/milvus-original:1 \"$img\" && docker rmi gpufleet-test/milvus-original:1"),
    ("nginx-upstream-edited", "lb-1", "sed -i '0,/server gpu-node-1/s//server gpu-node-9/' /etc/nginx/nginx.conf",
     "/etc/nginx/nginx.conf: content differs", None),
    ("driver-upgraded-without-reboot", NODE,
     "apt-get install -y -q --allow-change-held-packages nvidia-open=580.105.08-1",
     "driver loaded: reboot pending: driver 580.105.08 installed, 580.95.05 loaded", "drain"),
    ("gpu-missing", NODE,
     f"cp {GPUS_JSON} /root/gpus.json.bak && python3 -c \"import json;p='{GPUS_JSON}';"
     "json.dump(json.load(open(p))[:1],open(p,'w'))\"",
     "gpus: 1 GPUs visible, expected 2", f"mv /root/gpus.json.bak {GPUS_JSON}"),
    ("gpu-throttled", NODE,
     f"cp {GPUS_JSON} /root/gpus.json.bak && python3 -c \"import json;p='{GPUS_JSON}';g=json.load(open(p));"
     "g[1]['throttle']='0x0000000000000040';json.dump(g,open(p,'w'))\"",
     "GPU 1 throttled: hardware thermal slowdown", f"mv /root/gpus.json.bak {GPUS_JSON}"),
]


@pytest.mark.parametrize(("host_name", "inject", "expected", "repair"),
                         [c[1:] for c in CATALOG], ids=[c[0] for c in CATALOG])
def test_injected_drift_is_found_on_the_right_host_with_its_cause(converged, host_name, inject, expected, repair):
    target = converged[host_name]
    injected = target.run(inject)
    assert injected.rc == 0, injected.stderr
    try:
        assert_only_drifted(host_name, expected)
    finally:
        if repair and repair != "drain":
            assert target.run(repair).rc == 0
        else:
            if repair == "drain":
                assert target.run(DRAIN).rc == 0
            fixed = deploy("--limit", host_name, "--data", "allow_serving_disruption=true")
            assert fixed["rc"] == 0, fixed["stderr"][-2000:]
    code, report = drift()
    assert code == 0, report


def test_unreachable_host_exits_1_and_the_others_are_still_checked(converged):
    import docker

    client = docker.from_env()
    client.containers.get("lb-1").stop(timeout=5)
    try:
        converged[NODE].run("sed -i 's/modeset=0/modeset=1/' /etc/modprobe.d/gpufleet-blacklist-nouveau.conf")
        code, report = drift()
        assert code == 1
        by_host = {h["host"]: h for h in report["hosts"]}
        assert by_host["lb-1"]["reachable"] is False
        assert by_host[NODE]["drifted"] is True and by_host["gpu-node-1"]["drift"] == []
    finally:
        client.containers.get("lb-1").start()
        deploy("--limit", NODE)
    from gpufleet.lab.control import up

    up(2, 1)  # wait for lb-1's systemd and sshd again


def test_drift_outputs_prometheus_and_junit_files(converged, tmp_path):
    prom, junit = tmp_path / "drift.prom", tmp_path / "drift.xml"
    code, _ = drift("--prometheus", str(prom), "--junit", str(junit))
    assert code == 0
    assert 'gpufleet_drift_operations{host="gpu-node-1"} 0.0' in prom.read_text()
    assert 'tests="3"' in junit.read_text() and 'failures="0"' in junit.read_text()


MUTATING = (r"apt-get (install|remove|purge|update|upgrade)|apt-mark (hold|unhold)|dpkg -i|"
            r"docker (run|start|stop|rm|restart|pull|build|tag|rmi|network connect)|"
            # "reboot" as a command, not inside a path (/run/gpufleet-driver-reboot/, a marker it reads)
            r"systemctl (start|stop|restart|reload|enable|disable|daemon-reload|reboot)|(?<![\w/-])reboot\b|"
            r"\bmv |\bcp |\brm -|\btee |install -d|\bchmod |\bchown |\bmkdir |\btouch |sed -i|nginx -s")


def test_drift_only_reads(converged, monkeypatch):
    """In-process, every command drift sends is recorded: none may change anything, none uploads."""
    import re

    from pyinfra.connectors.ssh import SSHConnector

    from gpufleet import drift as engine
    from operations.deploy_lock import LOCK_FILE

    sent: list[str] = []
    original = SSHConnector.run_shell_command

    def record(self, command, *args, **kwargs):
        sent.append(command.get_raw_value() if hasattr(command, "get_raw_value") else str(command))
        return original(self, command, *args, **kwargs)

    def refuse_upload(*args, **kwargs):
        raise AssertionError("drift uploaded a file")

    monkeypatch.setattr(SSHConnector, "run_shell_command", record)
    monkeypatch.setattr(SSHConnector, "put_file", refuse_upload)
    converged[NODE].run("sed -i 's/modeset=0/modeset=1/' /etc/modprobe.d/gpufleet-blacklist-nouveau.conf")
    try:
        report = engine.check("inventory/lab.py")
        assert report.exit_code == 2 and [h.host for h in report.hosts if h.items] == [NODE]
    finally:
        monkeypatch.undo()
        deploy("--limit", NODE)
    assert sent, "no command recorded: the check did not reach the hosts"
    # The one write allowed: drift takes the host's deploy lock like every run of deploy.py
    # (operations/deploy_lock.py: a lock file and its holder record under /var/lib/gpufleet).
    # And the prefetch's scratch directory, which its own command makes and removes
    # (operations/read_lanes.py: concurrent_reads); any other write in that command still counts.
    from operations.read_lanes import SCRATCH_CLEANUP

    changing = [c for c in sent if re.search(MUTATING, c.replace(SCRATCH_CLEANUP, "")) and LOCK_FILE not in c]
    assert changing == [], changing[:5]
