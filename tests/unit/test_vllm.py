"""operations/vllm.py and files/vllm_nccl_check.py without a host (the command-level cases are in
tests/operations/vllm.*; regenerate them with tests/operations/make_vllm_cases.py)."""

from __future__ import annotations

import importlib.util
import json
import shlex
from pathlib import Path

import pytest
from pyinfra.api import OperationValueError

from gpufleet.settings import HostSettings, validate_host_data
from operations import secrets, vllm

ROOT = Path(__file__).resolve().parents[2]
CASES = ROOT / "tests" / "operations"
TOKEN = (ROOT / "tests/fixtures/vllm/hf-token").read_text().strip()
API_KEY = (ROOT / "tests/fixtures/vllm/api-key").read_text().strip()


def _check_module():
    spec = importlib.util.spec_from_file_location("vllm_nccl_check", ROOT / "files" / "vllm_nccl_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PINNED = {"vllm_model_revision": "0123456789abcdef0123456789abcdef01234567"}


def _spec(**over):
    kw = dict(name="vllm-n1-vllm-0", image="gpufleet/vllm-rtx5090:abc", model="Qwen/Qwen3-32B-AWQ",
              served_model_name="qwen3-32b-awq", port=8000, gpus=[0, 1], bind_address="10.0.0.11",
              tensor_parallel_size=2, max_model_len=32768, gpu_memory_utilization=0.8, quantization="awq_marlin")
    kw.update(over)
    return vllm.replica_spec(**kw)


# ----------------------------------------------------------------------------- the NCCL check -----
@pytest.mark.parametrize("code,version", [(22707, "2.27.7"), (22703, "2.27.3"), (23007, "2.30.7"), (2708, "2.7.8")])
def test_nccl_version_codes(code, version):
    assert _check_module().decode(code) == version


def test_check_without_nccl_fails_with_a_reason(capsys):
    # This venv has neither torch nor an NCCL wheel: the check must say so, not crash.
    rc = _check_module().main(["--expect-nccl", "2.27.7", "--require-arch", "sm_120"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 1 and not report["ok"]
    assert any("2.27.7" in p for p in report["problems"])


def _proc(tmp_path, maps: dict[int, str]):
    for pid, text in maps.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "maps").write_text(text)
    (tmp_path / "self").mkdir()  # not a pid: never read
    return str(tmp_path)


MAPS_LINE = "7f1c2a000000-7f1c2b000000 r-xp 00000000 00:2f 1311 {}\n"


def test_running_engine_library_is_the_first_process_mapping_libnccl(tmp_path):
    wheel = "/opt/vllm/lib/python3.11/site-packages/nvidia/nccl/lib/libnccl.so.2"
    proc = _proc(tmp_path, {1: MAPS_LINE.format("/usr/lib/libc.so.6"), 25: MAPS_LINE.format(wheel),
                            36: MAPS_LINE.format("/usr/lib/x86_64-linux-gnu/libnccl.so.2.19.3")})
    assert _check_module().engine_library(proc) == (wheel, 25)


def test_running_check_follows_vllm_nccl_so_path(tmp_path, monkeypatch):
    wheel = "/opt/vllm/lib/python3.11/site-packages/nvidia/nccl/lib/libnccl.so.2"
    own = str(tmp_path / "own" / "libnccl.so.2.27.7")
    proc = _proc(tmp_path, {1: MAPS_LINE.format(wheel), 40: MAPS_LINE.format(own)})
    module = _check_module()
    assert module.engine_library(proc, wanted=own) == (own, 40)  # not the wheel's, which torch maps everywhere
    monkeypatch.setenv("VLLM_NCCL_SO_PATH", str(tmp_path / "elsewhere.so"))
    assert module.running_check("2.27.7", proc) is None  # set, and mapped by nobody: the full check decides


def test_running_check_falls_back_when_no_process_maps_nccl(tmp_path, capsys):
    module = _check_module()
    proc = _proc(tmp_path, {1: MAPS_LINE.format("/usr/lib/libc.so.6"), 2: ""})
    assert module.engine_library(proc) is None and module.running_check("2.27.7", proc) is None
    # main() then runs the full check (this venv has no NCCL: it fails) and says why.
    rc = module.main(["--running", "--expect-nccl", "2.27.7"], proc=proc)
    report = json.loads(capsys.readouterr().out)
    assert rc == 1 and any("no process of this container maps libnccl" in n for n in report["notes"])


def test_running_check_reports_an_unreadable_library_against_the_pin(tmp_path):
    proc = _proc(tmp_path, {7: MAPS_LINE.format(str(tmp_path / "libnccl.so.2"))})  # no such file to load
    report = _check_module().running_check("2.27.7", proc)
    assert report["method"] == "mapped by the running engine (pid 7)" and report["nccl_version"] is None
    assert not report["ok"] and "the pin is 2.27.7" in report["problems"][0]


# ----------------------------------------------------------------------------- image --------------
def test_image_tag_follows_every_input():
    base = vllm.image_tag("vllm/vllm-openai:v0.11.0", "2.27.7")
    assert base.startswith("gpufleet/vllm-rtx5090:")
    assert vllm.image_tag("vllm/vllm-openai:v0.11.0", "2.27.3") != base
    assert vllm.image_tag("vllm/vllm-openai:v0.12.0", "2.27.7") != base
    assert vllm.image_tag("vllm/vllm-openai:v0.11.0", "2.27.7", "--index-url http://m/simple") != base
    assert vllm.image_tag("vllm/vllm-openai:v0.11.0", "2.27.7") == base


def test_image_cases_are_current():
    case = json.loads((CASES / "vllm.image" / "exists_is_noop.json").read_text())
    ref = next(iter(case["facts"]["docker.ImageState"]))
    assert ref == f"ref={vllm.image_tag(**case['kwargs'])}", (
        "files/Dockerfile.vllm_rtx5090 or files/vllm_nccl_check.py changed: "
        "run .venv/bin/python tests/operations/make_vllm_cases.py and review the diff")


def test_check_command_fails_and_removes_a_bad_image():
    cmd = vllm.check_command("gpufleet/vllm-rtx5090:x", "2.27.7", "sm_120")
    assert "--expect-nccl 2.27.7 --require-arch sm_120" in cmd
    assert "docker image rm gpufleet/vllm-rtx5090:x" in cmd and cmd.rstrip().endswith("exit 1; fi")
    assert vllm.arch_of("12.0") == "sm_120" and vllm.arch_of("9.0") == "sm_90"


# ----------------------------------------------------------------------------- replica ------------
def test_replica_command_line():
    spec = _spec(extra_args=["--enable-prefix-caching"], env={"NCCL_P2P_DISABLE": "1"})
    args = shlex.split(spec.run_command())
    assert args[args.index("--gpus") + 1] == '"device=0,1"'
    assert args[args.index("--publish") + 1] == "10.0.0.11:8000:8000"
    assert args[args.index("--shm-size") + 1] == "16g"
    assert args[args.index("--stop-timeout") + 1] == "45"  # shutdown 30 + 15
    tail = args[args.index("gpufleet/vllm-rtx5090:abc") + 1:]
    assert tail[0] == "Qwen/Qwen3-32B-AWQ"
    for flag, value in [("--tensor-parallel-size", "2"), ("--quantization", "awq_marlin"),
                        ("--max-model-len", "32768"), ("--gpu-memory-utilization", "0.8"),
                        ("--shutdown-timeout", "30"), ("--served-model-name", "qwen3-32b-awq")]:
        assert tail[tail.index(flag) + 1] == value
    assert tail[-1] == "--enable-prefix-caching"
    assert "NCCL_P2P_DISABLE=1" in args and "/var/lib/gpufleet/hf-cache:/root/.cache/huggingface" in args


def test_replica_options_left_out():
    args = shlex.split(_spec(quantization=None, shutdown_timeout=None, hf_cache_dir=None, shm_size=None).run_command())
    for flag in ("--quantization", "--shutdown-timeout", "--stop-timeout", "--volume", "--shm-size"):
        assert flag not in args


@pytest.mark.parametrize("extra", [["--api-key", "x"], ["--api-key=x"], ["--max-model-len", "4096"]])
def test_replica_refuses_secrets_and_duplicate_flags(extra):
    with pytest.raises(OperationValueError):
        _spec(extra_args=extra)


def test_replica_needs_an_ip_to_publish_on():
    with pytest.raises(OperationValueError, match="not an IP"):
        _spec(bind_address="gpu-node-1")
    assert "[fd00::5]:8000:8000" in _spec(bind_address="fd00::5").ports


def test_secrets_never_in_shell_commands():
    """Every vllm.replica case: the token and key appear in no command and no upload (a secret
    file's content travels base64-encoded on the write command's stdin; tests/unit/test_secrets.py)."""
    for path in sorted((CASES / "vllm.replica").glob("*.json")):
        for command in json.loads(path.read_text()).get("commands", []):
            shown = json.dumps({k: v for k, v in command.items() if k != "_stdin"}
                               if isinstance(command, dict) else command)
            assert TOKEN not in shown and API_KEY not in shown, path.name
            assert "--api-key" not in shown and '"upload"' not in shown


def test_rotated_secret_changes_the_spec():
    a = _spec(env_files={vllm.HF_TOKEN_ENV_FILE: secrets.content_digest("HF_TOKEN=a\n")})
    b = _spec(env_files={vllm.HF_TOKEN_ENV_FILE: secrets.content_digest("HF_TOKEN=b\n")})
    assert a.digest() != b.digest() and "--env-file /etc/gpufleet/hf-token.env" in a.run_command()


# ----------------------------------------------------------------------------- ready --------------
def test_probe_script_reads_the_key_from_its_file():
    script = vllm.probe_script("c", "http://10.0.0.11:8000", "m", vllm.API_KEY_ENV_FILE)
    assert "-H @-" in script and vllm.API_KEY_ENV_FILE in script
    assert "/health" in script and "/v1/models" in script and "/v1/completions" in script
    assert "Authorization" not in vllm.probe_script("c", "http://x:1", "m", None)


# ----------------------------------------------------------------------------- settings -----------
def test_vllm_settings_checks():
    settings, issues = validate_host_data("n", {"gpu_count": 2, "vllm_image": "vllm/vllm-openai:v0.20.1", **PINNED})
    assert settings is not None and not issues
    _, issues = validate_host_data("n", {"vllm_shutdown_timeout": 60, "vllm_stop_timeout": 30})
    assert [i.key for i in issues if i.severity == "error"] == ["vllm_stop_timeout"]
    _, issues = validate_host_data("n", {"vllm_shm_size": "lots"})
    assert [i.key for i in issues] == ["vllm_shm_size"]
    _, issues = validate_host_data("n", {"pip_install_args": "--index-url https://u:p@mirror/simple"})
    assert [i.key for i in issues] == ["pip_install_args"]


def test_docker_stop_waits_for_vllms_drain_unless_set():
    # docker stop -t: vLLM's --shutdown-timeout plus a grace, so a drain is never cut short.
    assert HostSettings(gpu_count=2, vllm_shutdown_timeout=60).vllm_stop_timeout_effective() == 75
    assert HostSettings(gpu_count=2, vllm_shutdown_timeout=60, vllm_stop_timeout=90).vllm_stop_timeout_effective() == 90
    assert HostSettings(gpu_count=2, vllm_shutdown_timeout=None).vllm_stop_timeout_effective() is None


def test_old_image_with_shutdown_timeout_is_refused():
    # vLLM < 0.18 exits on the unknown flag and the container crash-loops: an error, not a warning.
    settings, issues = validate_host_data("n", {"gpu_count": 2, "vllm_image": "vllm/vllm-openai:v0.11.0", **PINNED})
    assert settings is None
    assert [(i.key, i.severity) for i in issues] == [("vllm_shutdown_timeout", "error")]
    settings, _ = validate_host_data("n", {"gpu_count": 2, "vllm_image": "vllm/vllm-openai:v0.11.0",
                                           "vllm_shutdown_timeout": None})
    assert settings.vllm_warnings() == []
    settings, _ = validate_host_data("n", {"gpu_count": 2, "vllm_image": "vllm/vllm-openai:v0.20.1", **PINNED})
    assert settings.vllm_warnings() == []


def test_the_model_revision_pins_weights_and_tokenizer_and_is_not_an_extra_arg():
    commit = "0123456789abcdef0123456789abcdef01234567"
    command = _spec(revision=commit).command
    assert command[command.index("--revision") + 1] == commit
    assert command[command.index("--tokenizer-revision") + 1] == commit
    assert "--revision" not in _spec().command
    with pytest.raises(Exception, match="--revision is set from its own setting"):
        _spec(extra_args=["--revision=main"])


def test_the_running_check_finds_what_a_cuda_torch_mapped_on_a_real_gpu_machine(tmp_path):
    # tests/fixtures/gpu/h200-x1/nccl_running_check.txt: on an H200, `import torch` (CUDA 13) mapped
    # the nvidia-nccl wheel's libnccl.so.2, and --running read 2.28.9 from it in 0.13 s where the
    # full check took 5.39 s. The maps line captured there is found here the same way.
    capture = (ROOT / "tests/fixtures/gpu/h200-x1/nccl_running_check.txt").read_text()
    line = capture.split("maps after import torch: ['", 1)[1].split("']", 1)[0]
    proc = _proc(tmp_path, {451: line + "\n"})
    library, pid = _check_module().engine_library(proc)
    assert (library, pid) == ("/opt/torch/.venv/lib/python3.12/site-packages/nvidia/nccl/lib/libnccl.so.2", 451)
    assert '"method": "mapped by the running engine (pid 451)"' in capture and '"nccl_version": "2.28.9"' in capture


@pytest.fixture
def probe_host(tmp_path, monkeypatch):
    """Stub docker and curl on PATH: the container runs, /health answers 200, /v1/models lists $MODELS,
    and a completion's body is kept in $BODY."""
    import os
    import stat
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text("#!/bin/sh\necho 'running 0'\n")
    (bin_dir / "curl").write_text(
        f"#!{sys.executable}\nimport os, sys\nargs = sys.argv[1:]\n"
        "if '-w' in args:\n    print('200', end='')\n"
        "elif args[-1].endswith('/v1/models'):\n    print(os.environ['MODELS'])\n"
        "else:\n    open(os.environ['BODY'], 'w').write(args[args.index('-d') + 1])\n"
        "    print('{\"choices\": [{\"text\": \" ok\"}]}')\n")
    for tool in ("docker", "curl"):
        (bin_dir / tool).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("BODY", str(tmp_path / "body.json"))
    return tmp_path


def _probe(served_model_name: str, listed: str, cwd) -> str:
    import os
    import subprocess

    script = vllm.probe_script("vllm-0", "http://10.0.0.11:8000", served_model_name, None)
    env = {**os.environ, "MODELS": json.dumps({"object": "list", "data": [{"id": listed}]}, separators=(",", ":"))}
    done = subprocess.run(["sh", "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("name", ["Qwen/Qwen3-32B-AWQ", "qwen3-tiny", 'odd "name" $HOME\\x'])
def test_the_probe_asks_for_the_served_name_in_a_json_body(probe_host, name):
    # The body is JSON whatever the name holds, and /v1/models (compact JSON, as vLLM answers) lists it.
    assert _probe(name, name, probe_host) == "READY"
    assert json.loads((probe_host / "body.json").read_text()) == {
        "model": name, "prompt": "Hello", "max_tokens": 4, "temperature": 0}
    assert _probe("qwen3-tiny", "qwen3-tinyX", probe_host).startswith("/v1/models does not list qwen3-tiny")


def test_the_probe_never_runs_a_served_name_as_shell(probe_host):
    name = 'm";touch pwned1;"$(touch pwned2)`touch pwned3`'
    said = _probe(name, "another-model", probe_host)
    assert sorted(p.name for p in probe_host.iterdir() if p.name.startswith("pwned")) == []
    assert said.startswith(f"/v1/models does not list {name}: ")


@pytest.mark.parametrize("name", ["qwen$(reboot)", 'a"b', "a'b", "-served", "qwen3\n", "x;y", "a\\b", "über"])
def test_a_served_model_name_is_a_plain_name(name):
    _, issues = validate_host_data("gpu-node-01", {"gpu_count": 2, **PINNED, "vllm_served_model_name": name})
    [issue] = [i for i in issues if i.key == "vllm_served_model_name"]
    assert issue.host == "gpu-node-01" and issue.value == name and "letters, digits" in issue.expected


def test_the_served_names_in_use_stay_valid():
    for name in ("Qwen/Qwen3-32B-AWQ", "qwen3-tiny", "qwen3-32b-awq", "org/model:v1.2_x"):
        _, issues = validate_host_data("gpu-node-01", {"gpu_count": 2, **PINNED, "vllm_served_model_name": name})
        assert issues == [], (name, issues)
