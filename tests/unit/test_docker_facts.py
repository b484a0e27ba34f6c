"""Docker facts: daemon.json read as data (whatever its layout), runtimes, GPU containers."""

import subprocess

import pytest

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


FAKE_DOCKER = r"""#!/bin/sh
# A docker CLI that knows three containers (one renamed for a rollback) and logs each call.
echo "$*" >> "$(dirname "$0")/calls"
case "$1 $2" in
  "ps -aq") printf 'a1\nb2\nc3\n' ;;
  "ps -q") printf 'a1\nd4\n' ;;
  "inspect --format")
    case "$3" in *@*)  # VllmNcclVersions: the key of each container's run, and its name
      shift 3
      for c in "$@"; do echo "${c}full@sha256:img-$c@2026-12-06T11:21:46Z /vllm-node-vllm-$c"; done
      exit 0 ;;
    esac
    shift 3
    for c in "$@"; do case "$c" in
      a1) echo '/vllm-node-vllm-0|running|false|0|sha256:img1|lab/vllm:1' ;;
      b2) echo '/milvus|running|false|2|sha256:img2|lab/milvus:2' ;;
      c3) echo '/vllm-node-vllm-0.gpufleet-previous|exited|false|0|sha256:img0|lab/vllm:0' ;;
    esac; done ;;
  "image inspect") case "$5" in lab/vllm:1) echo sha256:img1 ;; lab/milvus:2) echo sha256:newer ;; *) exit 1 ;; esac ;;
  "exec a1full") echo '{"nccl_version": "2.27.7"}' ;;
  "exec d4full") echo '{"nccl_version": "2.27.3"}' ;;
  *) echo "unexpected: $*" >&2; exit 2 ;;
esac
"""


def _with_fake_docker(tmp_path, command: str) -> tuple[list[str], list[str]]:
    import os

    (tmp_path / "docker").write_text(FAKE_DOCKER)
    (tmp_path / "docker").chmod(0o755)
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True,
                         env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}).stdout
    return out.splitlines(), (tmp_path / "calls").read_text().splitlines()


def test_managed_containers_inspects_every_container_in_one_call(tmp_path):
    from operations.facts.docker import ManagedContainers

    out, calls = _with_fake_docker(tmp_path, ManagedContainers.command)
    fact = ManagedContainers().process(out)
    assert fact["status"] == "ok"
    assert fact["containers"] == [
        {"name": "milvus", "status": "running", "restarting": False, "restart_count": 2, "image_id": "sha256:img2",
         "image": "lab/milvus:2", "tag_id": "sha256:newer"},
        {"name": "vllm-node-vllm-0", "status": "running", "restarting": False, "restart_count": 0,
         "image_id": "sha256:img1", "image": "lab/vllm:1", "tag_id": "sha256:img1"}]
    # docker ps, one inspect of all three, one image inspect per container.
    assert [c.split()[0] for c in calls] == ["ps", "inspect", "image", "image", "image"]


def test_vllm_nccl_versions_checks_inside_only_the_containers_it_has_no_answer_for(tmp_path):
    from operations.facts.docker import VllmNcclVersions

    out, calls = _with_fake_docker(tmp_path, VllmNcclVersions().command())
    first = VllmNcclVersions().process(out)
    assert first["containers"] == {"vllm-node-vllm-a1": "2.27.7", "vllm-node-vllm-d4": "2.27.3"}
    assert first["keys"]["vllm-node-vllm-a1"] == "a1full@sha256:img-a1@2026-12-06T11:21:46Z"
    assert [c.split()[0] for c in calls] == ["ps", "inspect", "exec", "exec"]

    # a1's run already answered: only d4 is asked (its key changed: another start time).
    (tmp_path / "calls").unlink()
    known = {first["keys"]["vllm-node-vllm-a1"]: "2.27.7", "d4full@sha256:img-d4@2026-12-01T00:00:00Z": "2.27.7"}
    out, calls = _with_fake_docker(tmp_path, VllmNcclVersions().command(known=known))
    assert VllmNcclVersions().process(out)["containers"] == first["containers"]
    assert [c.split()[:2] for c in calls] == [["ps", "-q"], ["inspect", "--format"], ["exec", "d4full"]]


# A docker CLI whose daemon does not answer: what the real CLI prints (stderr) and its exit status.
DOCKER_DOWN = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/calls"
echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?" >&2
exit 1
"""


def _fact_commands():
    from operations.facts.container_runtime import ContainerRuntimes
    from operations.facts.docker import ManagedContainers, VllmNcclVersions
    from operations.facts.images import BuiltImage

    return [(ContainerRuntimes, ContainerRuntimes.command), (ManagedContainers, ManagedContainers.command),
            (VllmNcclVersions, VllmNcclVersions().command()),
            (BuiltImage, BuiltImage().command(ref="gpufleet/vllm-rtx5090:6e73", base="vllm/vllm-openai:v0.21.0"))]


@pytest.mark.parametrize("fact,command", _fact_commands(), ids=lambda v: getattr(v, "__name__", ""))
def test_a_docker_that_does_not_answer_fails_the_read_never_reads_as_no_containers(tmp_path, fact, command):
    import os

    (tmp_path / "docker").write_text(DOCKER_DOWN)
    (tmp_path / "docker").chmod(0o755)
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert done.returncode == 0  # the envelope: the read's status is in its output
    found = fact().process(done.stdout.splitlines())
    assert found["status"] == "failed" and found["exit_code"] == 1
    assert "Cannot connect to the Docker daemon" in found["error"]
