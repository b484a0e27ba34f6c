"""Docker facts: daemon.json read as data (whatever its layout), runtimes, GPU containers."""

import subprocess

from operations.docker_daemon import merged
from operations.facts.docker import DockerDaemonConfig, GpuContainers
from operations.facts.util import wrap_file


def read_with_fact_command(path) -> dict:
    out = subprocess.run(["sh", "-c", wrap_file(str(path))], capture_output=True, text=True, check=True).stdout
    return DockerDaemonConfig().process(out.splitlines())


def test_file_without_final_newline_is_still_read(tmp_path):
    daemon = tmp_path / "daemon.json"
    daemon.write_text('{"debug":false,"runtimes":{"nvidia":{"path":"nvidia-container-runtime","args":[]}}}')
    fact = read_with_fact_command(daemon)
    assert fact["status"] == "ok" and fact["config"]["debug"] is False


def test_missing_and_invalid_files_say_so(tmp_path):
    assert read_with_fact_command(tmp_path / "nope.json")["status"] == "missing"
    bad = tmp_path / "bad.json"
    bad.write_text("{runtimes: nvidia}\n")
    assert read_with_fact_command(bad)["status"] == "invalid"


def test_merge_keeps_foreign_keys_and_nested_runtimes():
    current = {"data-root": "/srv/docker", "runtimes": {"crun": {"path": "crun"}}}
    result = merged(current, {"runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}}})
    assert result["data-root"] == "/srv/docker" and set(result["runtimes"]) == {"crun", "nvidia"}
    assert current == {"data-root": "/srv/docker", "runtimes": {"crun": {"path": "crun"}}}  # not mutated


def test_gpu_containers_parse_docker_output():
    containers = GpuContainers().process([
        '/vllm-gpu-node-1-vllm-0|runc|[{"Driver":"","Count":0,"DeviceIDs":["0","1"],"Capabilities":[["gpu"]]}]',
        "/milvus|runc|null", "/legacy|nvidia|null", "__gpufleet_rc=0"])
    assert containers["containers"] == ["legacy", "vllm-gpu-node-1-vllm-0"]
