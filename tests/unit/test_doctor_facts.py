"""operations/facts/doctor.py: the two scripts doctor runs on a node, and their parsers.

Parsers run on real captures where there are some (a 2x H200 machine, published RTX 5090 output,
this machine's own run of files/vllm_nccl_check.py) and on the formats in tests/fixtures/doctor/
(see its README). The snapshot script itself is run with sh here, against stub tools: the lab's
stand-in nvidia-smi and a stub docker (the real docker is never on its PATH).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

from operations.facts import doctor
from operations.facts.util import RC
from tests.unit.doctor_node import CONTAINER, GPU, NODE, REPO, snapshot_lines, text

H200 = GPU / "h200-x2"


def test_snapshot_of_the_healthy_node_parses_every_section():
    ev = doctor.parse_snapshot(snapshot_lines())
    assert ev["hostnames"] == ["gpu-node-01", "gpu-node-01.dc1.example.net"]
    assert [g["name"] for g in ev["gpus"]["gpus"]] == ["NVIDIA GeForce RTX 5090"] * 2
    assert ev["topology"]["links"]["GPU0"]["GPU1"] == "PHB" and not ev["topology"]["nvlink"]
    assert ev["driver"]["version"] == "580.95.05" and ev["driver"]["flavor"] == "open"
    assert ev["modules"]["nvidia"] and not ev["modules"]["nouveau"]
    assert ev["packages"]["nvidia-open"] == {"version": "580.95.05-1", "held": True}
    assert ev["secure_boot"]["state"] == "disabled"
    assert ev["acs"]["status"] == "ok" and ev["acs"]["acs_enabled"] is False
    assert ev["docker"]["runtimes"] == ["io.containerd.runc.v2", "nvidia", "runc"]
    assert ev["daemon_json"]["config"]["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
    assert ev["units"]["docker.service"]["NeedDaemonReload"] == "no"
    assert ev["toolkit"]["nvidia-ctk"] == "/usr/bin/nvidia-ctk"
    assert [c["name"] for c in ev["containers"]] == [CONTAINER]
    assert ev["logs"][CONTAINER][-1].endswith('"GET /health HTTP/1.1" 200 OK')
    assert ev["reboot"] == {"required": False, "packages": []}


def test_real_h200_query_and_its_invalid_field_answer():
    # tests/fixtures/gpu/h200-x2: the real query, and the real answer to a field nvidia-smi does not know (rc 2)
    bad = text(H200 / "nvidia-smi-query-bad-field.txt")
    ev = doctor.parse_snapshot(snapshot_lines(gpus=[*text(H200 / "nvidia-smi-query-gpu.csv"), f"{RC}0"],
                                              pcie=[*bad, f"{RC}2"],
                                              topology=[*text(H200 / "nvidia-smi-topo-m.txt"), f"{RC}0"],
                                              driver=[*text(H200 / "proc-driver-nvidia-version.txt"), f"{RC}0"]))
    assert [(g["name"], g["memory_mib"], g["compute_capability"]) for g in ev["gpus"]["gpus"]] == [
        ("NVIDIA H200", 143771, "9.0")] * 2
    assert ev["pcie"]["status"] == "failed" and 'Field "bogus_field" is not a valid field' in ev["pcie"]["error"]
    assert ev["pcie"]["gpus"] == []
    assert ev["gpu_perf"]["status"] == "ok", "one failed query must not take the others with it"
    assert ev["topology"]["nvlink"] is True
    assert ev["driver"]["version"] == "580.159.04"


def test_gpu_perf_pcie_and_apps_rows():
    perf = doctor.parse_gpu_perf(text(NODE / "nvidia-smi-perf.csv"))
    assert perf[0] == {"index": 0, "pstate": "P2", "utilization": 64, "memory_used_mib": 29324, "temperature_c": 63,
                       "power_w": 412.37, "power_limit_w": 575.0, "throttle_mask": "0x0000000000000000", "throttle": []}
    assert doctor.parse_gpu_perf(["0, P0, 99, 100, 92, 580.00, 575.00, 0x0000000000000040"])[0]["throttle"] == [
        "hardware thermal slowdown"]
    assert doctor.parse_gpu_perf(["0, [N/A], [N/A], 5, [N/A], [N/A], [N/A], [N/A]"])[0]["power_w"] is None
    assert doctor.parse_pcie(text(NODE / "nvidia-smi-pcie.csv"))[1] == {
        "index": 1, "gen_current": 5, "gen_max": 5, "width_current": 16, "width_max": 16}
    apps = doctor.parse_compute_apps(text(NODE / "nvidia-smi-apps.csv") + ["No running processes found"])
    assert [(a["pid"], a["name"], a["used_mib"]) for a in apps] == [
        (21377, "VLLM::Worker_TP0", 28716), (21378, "VLLM::Worker_TP1", 28672)]


def test_docker_inspect_keeps_what_doctor_judges_and_drops_secret_values():
    raw = (NODE / "docker-inspect-vllm.json").read_text()
    assert "hf_FIXTUREtoken" in raw and "fixture-api-key" in raw  # the fixture carries them, like a real node
    (c,) = doctor.parse_containers("WARNING: something docker printed first\n" + raw)
    assert c["name"] == CONTAINER and c["running"] and c["restart_count"] == 0
    assert c["entrypoint"] == ["vllm", "serve"] and c["cmd"][0] == "Qwen/Qwen3-32B-AWQ"
    assert c["shm_size_bytes"] == 16 * 1024**3 and c["ipc_mode"] == "private"
    assert c["device_requests"] == [{"driver": "", "count": 0, "device_ids": ["0", "1"], "capabilities": [["gpu"]]}]
    assert c["env"]["HF_TOKEN"] == c["env"]["VLLM_API_KEY"] == "***"
    assert c["env"]["HF_HOME"] == "/root/.cache/huggingface"
    dumped = json.dumps(c)
    assert "hf_FIXTUREtoken" not in dumped and "fixture-api-key" not in dumped
    assert doctor.parse_containers("[]") == [] and doctor.parse_containers("not json") == []


def test_restarting_container_is_not_running():
    raw = json.loads((NODE / "docker-inspect-vllm.json").read_text())
    raw[0]["State"].update(Status="restarting", Restarting=True, Running=True, ExitCode=1, OOMKilled=True)
    raw[0]["RestartCount"] = 9
    (c,) = doctor.parse_containers(json.dumps(raw))
    assert (c["running"], c["restarting"], c["restart_count"], c["exit_code"], c["oom_killed"]) == (
        False, True, 9, 1, True)


def test_the_container_kept_for_a_rollback_is_not_judged_as_a_replica():
    raw = json.loads((NODE / "docker-inspect-vllm.json").read_text())
    kept = json.loads(json.dumps(raw[0]))
    kept["Name"] = raw[0]["Name"] + ".gpufleet-previous"
    kept["State"].update(Status="exited", Running=False, ExitCode=0)
    assert [c["name"] for c in doctor.parse_containers(json.dumps([raw[0], kept]))] == [CONTAINER]


def test_small_parsers():
    assert doctor.parse_docker_info(text(NODE / "docker-info.txt"))["server_version"] == "26.1.5+dfsg1"
    assert doctor.parse_docker_info([]) == {"runtimes": [], "default_runtime": None, "server_version": None}
    units = doctor.parse_units(text(NODE / "systemctl-show.txt"))
    assert sorted(units) == ["containerd.service", "docker.service"]
    assert doctor.parse_df_kib(text(NODE / "df-shm.txt")) == 16 * 1024 * 1024
    assert doctor.parse_df_kib(["df: /dev/shm: No such file or directory"]) is None
    assert doctor.parse_reboot(["required", "nvidia-open", "linux-image-6.8.0-90-generic"]) == {
        "required": True, "packages": ["nvidia-open", "linux-image-6.8.0-90-generic"]}
    assert doctor.size_bytes("16g") == 16 * 1024**3 and doctor.size_bytes("banana") is None


def test_the_nccl_check_report_real_cpu_capture_and_gpu_format():
    cpu = doctor.parse_check_report(text(NODE / "vllm-nccl-check-cpu-torch.json"))
    assert cpu["torch"] == "2.13.0+cpu" and cpu["torch_cuda"] is None and cpu["cuda_arch_list"] is None
    gpu = doctor.parse_check_report(["/usr/lib/python3/warnings.py:1: FutureWarning: x"]
                                    + text(NODE / "vllm-nccl-check-gpu.json"))
    assert gpu["nccl_version"] == "2.27.7" and "sm_120" in gpu["cuda_arch_list"]
    assert "problems" not in gpu  # only what doctor reads is kept
    assert doctor.parse_check_report(["python3: can't open file '/opt/gpufleet/vllm_nccl_check.py'"]) is None


def test_probes_of_a_running_and_a_stopped_container():
    lines = [f"{doctor.PROBE_MARK}up", f"{doctor.PART_MARK}nccl", *text(NODE / "vllm-nccl-check-gpu.json"), f"{RC}0",
             f"{doctor.PART_MARK}smi", *text(NODE / "nvidia-smi-L-container.txt"), f"{RC}0",
             f"{doctor.PART_MARK}shm", *text(NODE / "df-shm.txt"), f"{RC}0",
             f"{doctor.PROBE_MARK}down", f"{doctor.PART_MARK}nccl",
             "docker: Error response from daemon: No such image: sha256:0123.", f"{RC}125"]
    probes = doctor.parse_probes(lines)
    assert probes["up"]["nccl"]["nccl_version"] == "2.27.7"
    assert probes["up"]["smi"]["ok"] and len(probes["up"]["smi"]["gpus"]) == 2
    assert probes["up"]["shm_kib"] == 16777216
    assert probes["down"]["nccl"] is None and "exit 125" in probes["down"]["nccl_error"]
    assert probes["down"]["smi"] is None and probes["down"]["shm_kib"] is None


def test_probes_script_execs_into_running_containers_and_runs_the_image_of_stopped_ones():
    script = doctor.probes_script([
        {"name": "vllm-a", "running": True, "image_id": "sha256:aa", "env": {}},
        {"name": "vllm-b", "running": False, "image_id": "sha256:bb", "env": {"VLLM_NCCL_SO_PATH": "/opt/nccl/libnccl.so.2"}},
    ])
    assert "docker exec vllm-a python3 /opt/gpufleet/vllm_nccl_check.py" in script
    assert "docker exec vllm-a nvidia-smi -L" in script and "docker exec vllm-a df -Pk /dev/shm" in script
    assert ("docker run --rm --network none -e VLLM_NCCL_SO_PATH=/opt/nccl/libnccl.so.2 --entrypoint python3 "
            "sha256:bb /opt/gpufleet/vllm_nccl_check.py") in script
    assert "docker exec vllm-b" not in script
    assert subprocess.run(["sh", "-n", "-c", script]).returncode == 0


STUB_DOCKER = """#!/bin/sh
# a stub docker for the snapshot script test: answers from tests/fixtures/doctor/node, never touches an engine
case "$1 $2" in
  "info --format") cat "{node}/docker-info.txt" ;;
  "ps -aq") case "$*" in *label*) echo 3f5c0a9e7b1d ;; *) echo 3f5c0a9e7b1d ;; esac ;;
  "inspect --format") echo /vllm-gpu-node-01-vllm-0 ;;
  "inspect 3f5c0a9e7b1d") cat "{node}/docker-inspect-vllm.json" ;;
  "logs --tail") cat "{logs}/healthy.log" ;;
  *) echo "stub docker: unexpected $*" >&2; exit 1 ;;
esac
"""


def test_the_snapshot_script_runs_in_sh_and_parses(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(STUB_DOCKER.format(node=NODE, logs=REPO / "tests/fixtures/doctor/logs"))
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\nexec {sys.executable} {REPO / 'lab/standins/nvidia-smi'} \"$@\"\n")
    for tool in bin_dir.iterdir():
        tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    root = tmp_path / "lab"
    (root / "etc/gpufleet-lab").mkdir(parents=True)
    (root / "etc/gpufleet-lab/gpus.json").write_text(json.dumps([
        {"name": "NVIDIA GeForce RTX 5090", "memory_mib": 32607, "compute_capability": "12.0",
         "pci_bus_id": "00000000:01:00.0", "throttle": "0x0000000000000040"},
        {"name": "NVIDIA GeForce RTX 5090", "memory_mib": 32607, "compute_capability": "12.0",
         "pci_bus_id": "00000000:02:00.0"}]))
    (root / "run/gpufleet-lab/nvidia").mkdir(parents=True)
    version = root / "run/gpufleet-lab/nvidia/version"
    version.write_text(text(NODE / "proc-driver-nvidia-version.txt")[0] + "\n")
    script = doctor.snapshot_script(str(version), ("nvidia-open",))
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "GPUFLEET_LAB_ROOT": str(root), "GPUFLEET_LAB_HOSTNAME": "gpu-node-01",
           "LC_ALL": "C", "HOME": str(tmp_path)}
    run = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    ev = doctor.parse_snapshot(run.stdout.splitlines())
    assert ev["sections_read"] == sorted(name for name in (
        "hostname", "gpus", "gpu_perf", "pcie", "apps", "topology", "driver", "modules", "packages", "reboot",
        "secure_boot", "kernel_log", "acs", "docker_info", "daemon_json", "units", "toolkit", "containers", "logs"))
    assert ev["gpus"]["status"] == "ok" and len(ev["gpus"]["gpus"]) == 2
    assert ev["gpu_perf"]["gpus"][0]["throttle"] == ["hardware thermal slowdown"]
    # the stand-in does not know pcie.link.*: that section fails alone, as on a driver without those fields
    assert ev["pcie"]["status"] == "failed" and "not a valid field" in ev["pcie"]["error"]
    assert ev["topology"]["links"]["GPU0"]["GPU1"] == "PHB"
    assert ev["driver"]["version"] == "580.95.05"
    assert ev["docker"]["runtimes"] == ["io.containerd.runc.v2", "nvidia", "runc"]
    assert [c["name"] for c in ev["containers"]] == [CONTAINER]
    assert ev["logs"][CONTAINER][0].startswith("(APIServer pid=1)")
    assert ev["hostnames"] and os.uname().nodename in ev["hostnames"]


def test_every_tool_that_can_hang_runs_under_timeout():
    script = doctor.snapshot_script()
    assert script.startswith(doctor.PRELUDE)
    for line in script.splitlines()[1:]:
        for tool in ("nvidia-smi --query", "nvidia-smi topo", "docker info", "docker inspect $ids", "docker logs"):
            if tool in line:
                assert f"T 20 {tool}" in line, line


def test_a_hung_nvidia_smi_is_asked_once_and_its_sections_say_so(tmp_path):
    # A stub `timeout` that plays a wedged GPU: every nvidia-smi call "times out" (124) at once.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "timeout").write_text(
        "#!/bin/sh\n"
        f'case "$*" in *nvidia-smi*) echo "$*" >> {calls}; exit 124 ;; esac\n'
        'while [ "${1#-}" != "$1" ]; do shift 2; done; shift; exec "$@"\n')
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "docker").write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2; exit 1\n")
    for tool in bin_dir.iterdir():
        tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    run = subprocess.run(["sh", "-c", doctor.snapshot_script()], capture_output=True, text=True, timeout=60,
                         env={"PATH": f"{bin_dir}:/usr/bin:/bin", "LC_ALL": "C", "HOME": str(tmp_path)})
    ev = doctor.parse_snapshot(run.stdout.splitlines())
    assert calls.read_text().splitlines() == ["-k 2 20 nvidia-smi -L"], "only the probe may wait on a hung tool"
    for section in ("gpus", "gpu_perf", "pcie", "topology"):
        value = ev[section]
        assert (value["status"], value["exit_code"]) == ("failed", 124), section
        assert "nvidia-smi did not answer within 20 s" in value["error"]
    assert ev["docker"]["status"] == "failed" and "Cannot connect to the Docker daemon" in ev["docker"]["error"]
