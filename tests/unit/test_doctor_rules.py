"""Doctor's troubleshooting tree, rule by rule: a fault that fires it, and the neighbouring case that must not.

Every case starts from the healthy dual-RTX-5090 node of tests/unit/doctor_node.py (evidence built
through the real parsers from tests/fixtures/doctor/), changes one thing, and judges it with the
real rules. Faults that live in a tool's output are injected there (a replaced section of the
snapshot) so the parsers run too.
"""

from __future__ import annotations

import pytest

from gpufleet.doctor.rules import RULE_IDS, judge, vllm_args
from operations.facts.doctor import LOG_MARK, parse_probes, parse_snapshot
from operations.facts.util import MISSING, RC
from tests.unit.doctor_node import (
    CONTAINER, LOGS, acs_lines, container, healthy_evidence, probe_lines, snapshot_lines, text,
)


def ids(ev: dict) -> list[str]:
    return [f.id for f in judge(ev).findings]


def finding(ev: dict, rule: str):
    found = [f for f in judge(ev).findings if f.id == rule]
    assert found, f"{rule} did not fire: {ids(ev)}"
    return found[0]


def from_snapshot(**sections) -> dict:
    """Healthy evidence whose host part is re-parsed from a snapshot with these sections replaced."""
    ev = healthy_evidence()
    ev.update(parse_snapshot(snapshot_lines(**sections)))
    return ev


def set_flag(ev: dict, flag: str, value: str) -> None:
    cmd = container(ev)["cmd"]
    cmd[cmd.index(flag) + 1] = value


def test_the_healthy_node_has_no_finding_and_nothing_unjudged():
    diagnosis = judge(healthy_evidence())
    assert diagnosis.findings == []
    assert diagnosis.notes == []


# --------------------------------------------------------------------------------- faults ----------
def nccl_old(ev):
    ev["probes"][CONTAINER]["nccl"]["nccl_version"] = "2.26.2"


def acs_on(ev):
    ev.update(parse_snapshot(snapshot_lines(acs=acs_lines(redirect=True))))


def shm_default(ev):
    container(ev)["shm_size_bytes"] = 67108864
    ev["probes"][CONTAINER]["shm_kib"] = 65536


def no_sm120(ev):
    ev["probes"][CONTAINER]["nccl"]["cuda_arch_list"] = ["sm_70", "sm_75", "sm_80", "sm_89", "sm_90", "compute_90"]


def tp1_too_long(ev):
    set_flag(ev, "--tensor-parallel-size", "1")
    container(ev)["device_requests"][0]["device_ids"] = ["0"]
    container(ev).update(restarting=True, running=False, restart_count=5)


def gpu_held(ev):
    container(ev).update(running=False, restarting=True, restart_count=4)
    ev["gpu_perf"]["gpus"][0]["memory_used_mib"] = 28000


def tp1_one_gpu(ev):
    set_flag(ev, "--tensor-parallel-size", "1")
    set_flag(ev, "--max-model-len", "8192")
    container(ev)["device_requests"][0]["device_ids"] = ["0"]


def slot_x8(ev):
    ev.update(parse_snapshot(snapshot_lines(pcie=["0, 5, 5, 16, 16", "1, 4, 4, 8, 8", f"{RC}0"])))


def hot(ev):
    ev.update(parse_snapshot(snapshot_lines(gpu_perf=["0, P2, 99, 29324, 91, 401.00, 575.00, 0x0000000000000060",
                                                      "1, P2, 97, 29280, 70, 398.02, 575.00, 0x0000000000000000",
                                                      f"{RC}0"])))


def eager(ev):
    container(ev)["cmd"].append("--enforce-eager")


def no_toolkit(ev):
    ev["packages"].pop("nvidia-container-toolkit")
    ev["toolkit"] = {"nvidia-container-runtime": None, "nvidia-ctk": None, "nvidia-container-runtime-hook": None}


def no_runtime(ev):
    ev["daemon_json"]["config"].pop("runtimes")


def docker_not_restarted(ev):
    ev["docker"]["runtimes"] = ["io.containerd.runc.v2", "runc"]


def reload_pending(ev):
    ev["units"]["docker.service"]["NeedDaemonReload"] = "yes"


def nvml_lost(ev):
    ev["probes"][CONTAINER]["smi"] = {"ok": False, "exit_code": 255, "gpus": [],
                                      "output": ["Failed to initialize NVML: Unknown Error"]}


def driver_upgraded(ev):
    ev["packages"]["nvidia-open"]["version"] = "580.105.08-1"
    ev["reboot"] = {"required": True, "packages": ["nvidia-open", "nvidia-kernel-open-dkms"]}


def secure_boot_blocks(ev):
    ev.update(parse_snapshot(snapshot_lines(
        driver=[MISSING], modules=[f"{RC}0"],
        secure_boot=["__gpufleet_sb=mokutil", "SecureBoot enabled", f"{RC}0"],
        kernel_log=["[    7.120377] Loading of unsigned module is rejected"])))


def not_loaded(ev):
    ev.update(parse_snapshot(snapshot_lines(driver=[MISSING], modules=[f"{RC}0"],
                                            kernel_log=["[    6.001] NVRM: No NVIDIA devices probed."])))


def other_card(ev):
    ev["declared"]["gpu_name"] = "NVIDIA GeForce RTX 4090"  # the inventory says one card, the node has another


def one_gpu_gone(ev):
    ev.update(parse_snapshot(snapshot_lines(gpus=[text_line(0), f"{RC}0"])))


def text_line(i: int) -> str:
    from tests.unit.doctor_node import NODE

    return text(NODE / "nvidia-smi-query-gpu.csv")[i]


def smi_hung(ev):
    ev.update(parse_snapshot(snapshot_lines(gpus=["nvidia-smi did not answer within 20 s (skipped)", f"{RC}124"],
                                            kernel_log=["[8812.4] NVRM: Xid (PCI:0000:02:00): 79, pid=0, GPU has "
                                                        "fallen off the bus."])))


def debug_env(ev):
    container(ev)["env"].update(NCCL_DEBUG="INFO", CUDA_LAUNCH_BLOCKING="1", VLLM_TEST_FORCE_FP8_MARLIN="1")


def deprecated_env(ev):
    container(ev)["env"].update(NCCL_MIN_NRINGS="4")


def crash_loop(ev):
    container(ev).update(status="restarting", running=False, restarting=True, restart_count=7, exit_code=1)
    ev["logs"][CONTAINER] = text(LOGS / "no-kernel-image.log")


def exited(ev):
    container(ev).update(status="exited", running=False, restarting=False, restart_count=0, exit_code=2)
    ev["logs"][CONTAINER] = text(LOGS / "bad-flag.log")


def gone(ev):
    ev.update(parse_snapshot(snapshot_lines(containers=["[]", f"{RC}0"], logs=[f"{RC}0"])))
    ev["probes"] = {}


def docker_dead(ev):
    ev.update(parse_snapshot(snapshot_lines(
        docker_info=["Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon "
                     "running?", f"{RC}1"],
        containers=["[]", f"{RC}0"], logs=[f"{RC}0"])))
    ev["probes"] = {}


FAULTS = [
    (nccl_old, "nccl.version-not-pinned", "error"),
    (acs_on, "nccl.acs-redirect", "error"),
    (shm_default, "nccl.shm-too-small", "error"),
    (no_sm120, "cuda.arch-missing", "error"),
    (tp1_too_long, "memory.plan-does-not-fit", "error"),
    (gpu_held, "memory.gpu-busy", "error"),
    (tp1_one_gpu, "throughput.tp1-idle-gpu", "warning"),
    (slot_x8, "throughput.pcie-link", "warning"),
    (hot, "throughput.throttling", "warning"),
    (eager, "throughput.enforce-eager", "warning"),
    (no_toolkit, "toolkit.missing", "error"),
    (no_runtime, "toolkit.runtime-not-configured", "error"),
    (docker_not_restarted, "toolkit.docker-restart-pending", "error"),
    (reload_pending, "toolkit.daemon-reload-pending", "warning"),
    (nvml_lost, "toolkit.gpus-lost-in-container", "error"),
    (driver_upgraded, "driver.reboot-pending", "error"),
    (secure_boot_blocks, "driver.secure-boot", "error"),
    (not_loaded, "driver.not-loaded", "error"),
    (one_gpu_gone, "gpu.missing", "error"),
    (other_card, "gpu.model-mismatch", "error"),
    (smi_hung, "gpu.nvidia-smi-failed", "error"),
    (debug_env, "config.debug-env", "error"),
    (deprecated_env, "config.deprecated-env", "warning"),
    (crash_loop, "replica.crash-loop", "error"),
    (exited, "replica.exited", "error"),
    (gone, "replica.missing", "error"),
    (docker_dead, "docker.down", "error"),
]


@pytest.mark.parametrize("fault,rule,severity", FAULTS, ids=[f[1] for f in FAULTS])
def test_each_fault_fires_its_rule_with_evidence_and_a_fix(fault, rule, severity):
    ev = healthy_evidence()
    fault(ev)
    f = finding(ev, rule)
    assert f.severity == severity
    assert f.evidence and all(e.what and e.where and e.value for e in f.evidence)
    assert len(f.fix) > 20


def test_every_rule_has_a_fault():
    assert {rule for _, rule, _ in FAULTS} == set(RULE_IDS)


# --------------------------------------------------------------------- what each finding says ------
def test_nccl_version_names_what_vllm_loads_and_the_pin():
    ev = healthy_evidence()
    nccl_old(ev)
    f = finding(ev, "nccl.version-not-pinned")
    assert "2.26.2" in f.title and "2.27.7" in f.title
    assert any("vllm find_nccl_library()" in e.value for e in f.evidence)
    assert f.subject == CONTAINER


def test_acs_names_the_redirecting_bridge_and_its_flags():
    ev = healthy_evidence()
    acs_on(ev)
    f = finding(ev, "nccl.acs-redirect")
    assert "0000:00:01.1" in f.title and "0000:00:03.1" not in f.title
    assert "SrcValid+" in f.evidence[0].value and "ReqRedir+" in f.evidence[0].value
    assert "pci=noacs" in f.fix and "NCCL_P2P_DISABLE=1" in f.fix


def test_shm_names_configured_and_seen_sizes():
    ev = healthy_evidence()
    shm_default(ev)
    f = finding(ev, "nccl.shm-too-small")
    assert "0.06 GiB" in f.title and "16g" in f.title


def test_plan_verdict_uses_the_running_flags_not_the_settings():
    ev = healthy_evidence()
    tp1_too_long(ev)
    f = finding(ev, "memory.plan-does-not-fit")
    planner = next(e.value for e in f.evidence if e.what == "planner")
    assert "max_model_len 32768 does not fit" in planner
    assert "TP=1" in f.evidence[0].value and "0.87" in f.fix


def test_plan_on_a_running_replica_is_a_warning():
    ev = healthy_evidence()
    tp1_too_long(ev)
    container(ev).update(restarting=False, running=True, restart_count=0)
    assert finding(ev, "memory.plan-does-not-fit").severity == "warning"


def test_gpu_busy_lists_the_holders():
    ev = healthy_evidence()
    gpu_held(ev)
    f = finding(ev, "memory.gpu-busy")
    assert "GPU 0" in f.title and "VLLM::Worker_TP0 (pid 21377" in f.evidence[2].value


def test_crash_loop_is_classified_from_its_log():
    ev = healthy_evidence()
    crash_loop(ev)
    f = finding(ev, "replica.crash-loop")
    assert "no kernel image for these GPUs" in f.title
    cause = next(e for e in f.evidence if e.what == "cause")
    assert "no kernel image is available" in cause.value
    excerpt = next(e for e in f.evidence if e.what == "last log lines")
    assert excerpt.value.splitlines()[-1].startswith("RuntimeError: Engine core initialization failed")
    assert "sm_120" in f.fix


# Docker's State.StartedAt of the fixture's container, and a read some time after it.
STARTED = "2026-12-01T09:14:04.020554210Z"
STARTED_EPOCH = 1796116444.02055


def read_after(ev, seconds: float, restarts: int, **state) -> None:
    container(ev).update(started_at=STARTED, restart_count=restarts, **state)
    ev["read_at"] = STARTED_EPOCH + seconds


def test_a_replica_running_for_weeks_after_old_restarts_is_not_crash_looping():
    """RestartCount counts since the container was created: three crashes weeks ago, then weeks of
    serving, is history (a note), not a crash loop."""
    ev = healthy_evidence()
    read_after(ev, 21 * 86400, restarts=3)
    assert "replica.crash-loop" not in ids(ev) and "memory.plan-does-not-fit" not in ids(ev)
    assert any(f"{CONTAINER} restarted 3 times since it was created" in n and "21 days since its last start" in n
               for n in judge(ev).notes), judge(ev).notes


@pytest.mark.parametrize("state,said", [
    ({"restarts": 4, "seconds": 5, "status": "restarting", "running": False, "restarting": True},  # Docker: now
     "restarting, 4 restarts"),
    ({"restarts": 5, "seconds": 120}, "running again, 5 restarts, last started 2 min ago"),
    ({"restarts": 6, "seconds": 21 * 86400, "status": "exited", "running": False, "exit_code": 1},  # gave up
     "exited, exit code 1, 6 restarts"),
], ids=["restarting", "started-recently", "exited"])
def test_a_replica_restarting_now_or_just_restarted_is_crash_looping(state, said):
    ev = healthy_evidence()
    read_after(ev, state.pop("seconds"), state.pop("restarts"), **state)
    ev["logs"][CONTAINER] = text(LOGS / "cuda-oom.log")
    f = finding(ev, "replica.crash-loop")
    assert f.severity == "error" and "CUDA out of memory" in f.title
    assert next(e.value for e in f.evidence if e.what == "state").startswith(said)


def test_debug_env_is_a_warning_in_a_declared_debugging_session():
    ev = healthy_evidence()
    debug_env(ev)
    ev["declared"]["allow_debug_settings"] = True
    f = finding(ev, "config.debug-env")
    assert f.severity == "warning"
    assert {e.what for e in f.evidence} == {"NCCL_DEBUG=INFO", "CUDA_LAUNCH_BLOCKING=1", "VLLM_TEST_FORCE_FP8_MARLIN=1"}


def test_secure_boot_reads_the_kernel_log():
    ev = healthy_evidence()
    secure_boot_blocks(ev)
    f = finding(ev, "driver.secure-boot")
    assert "Loading of unsigned module is rejected" in f.evidence[-1].value
    assert "driver.reboot-pending" not in ids(ev) and "driver.not-loaded" not in ids(ev)


def test_a_hung_nvidia_smi_is_a_wedged_gpu_with_its_xid():
    ev = healthy_evidence()
    smi_hung(ev)
    f = finding(ev, "gpu.nvidia-smi-failed")
    assert "wedged" in f.title and "fallen off the bus" in f.evidence[1].value


def test_docker_down_hides_the_container_rules():
    ev = healthy_evidence()
    docker_dead(ev)
    assert ids(ev) == ["docker.down"]


# --------------------------------------------------------------------- neighbours that must not fire -
def acs_on_p2p_disabled(ev):
    acs_on(ev)
    container(ev)["env"]["NCCL_P2P_DISABLE"] = "1"


def acs_on_tp1(ev):
    acs_on(ev)
    tp1_one_gpu(ev)


def shm_host_ipc_big(ev):
    container(ev).update(ipc_mode="host", shm_size_bytes=67108864)
    ev["probes"][CONTAINER]["shm_kib"] = 64 * 1024 * 1024


def shm_small_tp1(ev):
    tp1_one_gpu(ev)
    shm_default(ev)


def cpu_torch(ev):
    ev["probes"] = parse_probes(probe_lines(nccl="vllm-nccl-check-cpu-torch.json"))


def tp1_without_long_context(ev):
    set_flag(ev, "--tensor-parallel-size", "1")
    set_flag(ev, "--max-model-len", "8192")
    container(ev).update(restarting=True, running=False, restart_count=5)


def gpu_held_but_running(ev):
    ev["gpu_perf"]["gpus"][0]["memory_used_mib"] = 31000


def two_tp1_replicas(ev):
    import copy

    tp1_one_gpu(ev)
    other = copy.deepcopy(container(ev))
    other["name"] = "vllm-gpu-node-01-vllm-1"
    other["device_requests"][0]["device_ids"] = ["1"]
    ev["containers"].append(other)


def idle_link(ev):
    ev.update(parse_snapshot(snapshot_lines(
        pcie=["0, 1, 5, 16, 16", "1, 1, 5, 16, 16", f"{RC}0"],
        gpu_perf=["0, P8, 0, 29324, 34, 21.50, 575.00, 0x0000000000000001",
                  "1, P8, 0, 29280, 33, 20.11, 575.00, 0x0000000000000001", f"{RC}0"])))


def power_cap_only(ev):
    ev["gpu_perf"]["gpus"][0]["throttle"] = []  # 0x4 (software power cap under load) is normal
    ev["gpu_perf"]["gpus"][0]["throttle_mask"] = "0x0000000000000004"


def eager_on_cpu(ev):
    eager(ev)
    cpu_torch(ev)


def toolkit_binary_without_package(ev):
    ev["packages"].pop("nvidia-container-toolkit")


def smi_not_in_image(ev):
    ev["probes"][CONTAINER]["smi"] = {"ok": False, "exit_code": 127, "gpus": [], "output": [
        'OCI runtime exec failed: exec failed: unable to start container process: exec: "nvidia-smi": '
        'executable file not found in $PATH: unknown']}


def secure_boot_but_signed(ev):
    ev.update(parse_snapshot(snapshot_lines(secure_boot=["__gpufleet_sb=mokutil", "SecureBoot enabled", f"{RC}0"])))


def not_loaded_fresh(ev):
    not_loaded(ev)
    ev["reboot"] = {"required": True, "packages": ["nvidia-open"]}


def smi_fails_after_upgrade(ev):
    driver_upgraded(ev)
    ev.update({k: v for k, v in parse_snapshot(snapshot_lines(gpus=[
        "Failed to initialize NVML: Driver/library version mismatch", f"{RC}18"])).items() if k == "gpus"})


def nccl_debug_warn(ev):
    container(ev)["env"]["NCCL_DEBUG"] = "WARN"


def restarted_twice_running(ev):
    container(ev)["restart_count"] = 2


NEIGHBOURS = [
    (acs_on_p2p_disabled, "nccl.acs-redirect"),
    (acs_on_tp1, "nccl.acs-redirect"),
    (shm_host_ipc_big, "nccl.shm-too-small"),
    (shm_small_tp1, "nccl.shm-too-small"),
    (cpu_torch, "cuda.arch-missing"),
    (tp1_without_long_context, "memory.plan-does-not-fit"),
    (gpu_held_but_running, "memory.gpu-busy"),
    (two_tp1_replicas, "throughput.tp1-idle-gpu"),
    (idle_link, "throughput.pcie-link"),
    (power_cap_only, "throughput.throttling"),
    (eager_on_cpu, "throughput.enforce-eager"),
    (toolkit_binary_without_package, "toolkit.missing"),
    (smi_not_in_image, "toolkit.gpus-lost-in-container"),
    (secure_boot_but_signed, "driver.secure-boot"),
    (not_loaded_fresh, "driver.not-loaded"),
    (smi_fails_after_upgrade, "gpu.nvidia-smi-failed"),
    (nccl_debug_warn, "config.debug-env"),
    (restarted_twice_running, "replica.crash-loop"),
]


@pytest.mark.parametrize("case,rule", NEIGHBOURS, ids=[n[0].__name__ for n in NEIGHBOURS])
def test_the_neighbouring_case_does_not_fire(case, rule):
    ev = healthy_evidence()
    case(ev)
    assert rule not in ids(ev)


def test_neighbours_that_cannot_be_judged_say_so():
    ev = healthy_evidence()
    acs_on_p2p_disabled(ev)
    assert any("NCCL_P2P_DISABLE=1 is set" in n for n in judge(ev).notes)
    ev = healthy_evidence()
    idle_link(ev)
    assert any("while idle" in n for n in judge(ev).notes)
    ev = healthy_evidence()
    cpu_torch(ev)
    notes = judge(ev).notes
    assert any("has no CUDA" in n for n in notes) and any("no NCCL found" in n for n in notes)
    ev = healthy_evidence()
    not_loaded_fresh(ev)
    assert "driver.reboot-pending" in ids(ev)


def test_a_node_with_no_gpus_declared_is_not_judged():
    ev = healthy_evidence()
    ev["declared"]["gpu_count"] = 0
    crash_loop(ev)
    assert ids(ev) == []


# --------------------------------------------------------------------- helpers ---------------------
def test_vllm_args_reads_both_command_styles():
    model, flags = vllm_args({"entrypoint": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
                              "cmd": ["--model", "Qwen/Qwen3-8B", "--tensor_parallel_size=2", "--enforce-eager",
                                      "--dtype", "float32"]})
    assert model == "Qwen/Qwen3-8B"
    assert flags["--tensor-parallel-size"] == "2" and flags["--enforce-eager"] is True
    assert flags["--dtype"] == "float32"


def test_logs_marker_is_the_one_the_reader_splits_on():
    ev = parse_snapshot(snapshot_lines(logs=[f"{LOG_MARK}a", "x", f"{LOG_MARK}b", "y", f"{RC}0"]))
    assert ev["logs"] == {"a": ["x"], "b": ["y"]}
