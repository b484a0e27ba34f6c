"""Docker facts: daemon.json read as data (whatever its layout), runtimes, GPU containers."""

import json
import subprocess
from pathlib import Path

import pytest

from operations.docker_daemon import merged
from operations.facts.docker import SPEC_LABEL, DockerDaemonConfig, GpuContainers
from operations.facts.util import wrap_file

from . import docker_api_docs as docs


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


# ------------------------------------------------ the Docker reads, against a stand-in daemon ----
# The facts' shell runs for real (sh, the real curl) against tests/unit/fake_docker_api.py, a
# process serving Docker's API on a unix socket of this test's own (the stand_in_docker fixture,
# tests/unit/conftest.py); `docker` on the PATH is a stand-in CLI that logs its calls (the facts
# still need `docker` installed, and VllmNcclVersions runs `docker exec` in a replica it has no
# answer for).
FAKE_DOCKER = r"""#!/bin/sh
echo "$*" >> "$(dirname "$0")/calls"
case "$1 $2" in
  "exec a1") echo '{"nccl_version": "2.27.7"}' ;;
  "exec d4") echo '{"nccl_version": "2.27.3"}' ;;
  *) echo "unexpected: $*" >&2; exit 2 ;;
esac
"""


VLLM_ID, MILVUS_ID, PREVIOUS_ID, STOPPED_ID = ("a1" * 32, "b2" * 32, "c3" * 32, "d4" * 32)
VLLM_C = docs.container("vllm-node-vllm-0", cid=VLLM_ID, labels={SPEC_LABEL: "5d9d"}, image="lab/vllm:1",
                        image_id="sha256:img1", device_requests=[{"Driver": "", "Count": 0, "DeviceIDs": ["0", "1"],
                                                                   "Capabilities": [["gpu"]], "Options": {}}])
MILVUS_C = docs.container("milvus", cid=MILVUS_ID, labels={SPEC_LABEL: "77aa"}, image="lab/milvus:2",
                          image_id="sha256:img2", restart_count=2)
PREVIOUS_C = docs.container("vllm-node-vllm-0.gpufleet-previous", cid=PREVIOUS_ID, labels={SPEC_LABEL: "0f0f"},
                            image="lab/vllm:0", image_id="sha256:img0", status="exited", runtime="nvidia")
LEGACY_C = docs.container("legacy", cid=STOPPED_ID, runtime="nvidia")


@pytest.fixture
def stand_in_docker(stand_in_docker):
    return lambda routes: stand_in_docker(routes, cli=FAKE_DOCKER)


def test_gpu_containers_are_the_running_ones_given_gpus_by_request_or_runtime(stand_in_docker):
    from operations.facts.docker_api import list_path

    docker = stand_in_docker({list_path("containers"): (200, docs.listed(VLLM_C, MILVUS_C, LEGACY_C)),
                              **{p: (s, d) for p, s, d in docs.inspected(VLLM_C, MILVUS_C, LEGACY_C)}})
    fact = GpuContainers().process(docker.read(GpuContainers.command))
    assert fact == {"status": "ok", "exit_code": 0, "error": None, "containers": ["legacy", "vllm-node-vllm-0"]}
    # One list, then one curl for every inspect (curl logs no process per path: the API log shows the paths).
    assert docker.asked() == [list_path("containers"), *(f"/containers/{c['Id']}/json" for c in (VLLM_C, MILVUS_C, LEGACY_C))]
    assert docker.cli_calls() == []  # no docker CLI process


def test_container_runtimes_inspects_every_container_and_the_image_each_tag_names_now(stand_in_docker):
    from operations.facts.container_runtime import ContainerRuntimes
    from operations.facts.docker_api import list_path

    listing = list_path("containers", all_states=True)
    docker = stand_in_docker({
        listing: (200, docs.listed(VLLM_C, MILVUS_C, PREVIOUS_C, LEGACY_C)),
        **{p: (s, d) for p, s, d in docs.inspected(VLLM_C, MILVUS_C, PREVIOUS_C, LEGACY_C)},
        "/images/lab/vllm:1/json": (200, docs.image("sha256:img1")),
        "/images/lab/milvus:2/json": (200, docs.image("sha256:newer")),  # the tag was moved since
        # lab/vllm:0 (the kept previous container's) and lab/image:1 (legacy's) are gone: 404
    })
    fact = ContainerRuntimes().process(docker.read(ContainerRuntimes.command))
    assert fact["status"] == "ok"
    states = {c["name"]: (c["spec"], c["status"], c["restarting"], c["restart_count"], c["image_id"], c["image"], c["tag_id"])
              for c in fact["containers"]}
    assert states == {
        "legacy": (None, "running", False, 0, "sha256:" + "1" * 64, "lab/image:1", None),
        "milvus": ("77aa", "running", False, 2, "sha256:img2", "lab/milvus:2", "sha256:newer"),
        "vllm-node-vllm-0": ("5d9d", "running", False, 0, "sha256:img1", "lab/vllm:1", "sha256:img1"),
        "vllm-node-vllm-0.gpufleet-previous": ("0f0f", "exited", False, 0, "sha256:img0", "lab/vllm:0", None)}
    # One list, one curl for the four inspects, one for the images their references name.
    assert docker.asked()[0] == listing
    assert sorted(docker.asked()[5:]) == ["/images/lab/image:1/json", "/images/lab/milvus:2/json",
                                          "/images/lab/vllm:0/json", "/images/lab/vllm:1/json"]
    assert docker.cli_calls() == []


def test_a_label_named_image_on_any_container_is_not_asked_as_an_image(stand_in_docker):
    """A label whose key is "Image" reads like a reference to the shell: asked as a path, curl would
    take its [ ] as a URL glob and fail the read of every container."""
    from operations.facts.container_runtime import ContainerRuntimes
    from operations.facts.docker_api import list_path

    odd = docs.container("builder", cid="e5" * 32, labels={"Image": "build[3]"}, image="lab/builder:1")
    docker = stand_in_docker({list_path("containers", all_states=True): (200, docs.listed(MILVUS_C, odd)),
                              **{p: (s, d) for p, s, d in docs.inspected(MILVUS_C, odd)},
                              "/images/lab/milvus:2/json": (200, docs.image("sha256:img2"))})
    fact = ContainerRuntimes().process(docker.read(ContainerRuntimes.command))
    assert fact["status"] == "ok", fact["error"]
    assert {c["name"]: c["tag_id"] for c in fact["containers"]} == {"builder": None, "milvus": "sha256:img2"}
    assert "/images/build[3]/json" not in docker.asked()


def test_a_container_removed_between_the_list_and_its_inspect_is_left_out(stand_in_docker):
    from operations.facts.container_runtime import ContainerRuntimes
    from operations.facts.docker_api import list_path

    docker = stand_in_docker({list_path("containers", all_states=True): (200, docs.listed(MILVUS_C, LEGACY_C)),
                              **{p: (s, d) for p, s, d in docs.inspected(MILVUS_C)}})  # legacy: 404
    fact = ContainerRuntimes().process(docker.read(ContainerRuntimes.command))
    assert fact["status"] == "ok" and [c["name"] for c in fact["containers"]] == ["milvus"]


def test_an_api_error_on_an_inspect_fails_the_read(stand_in_docker):
    from operations.facts.container_runtime import ContainerRuntimes
    from operations.facts.docker_api import list_path

    docker = stand_in_docker({list_path("containers", all_states=True): (200, docs.listed(MILVUS_C)),
                              f"/containers/{MILVUS_ID}/json": (500, {"message": "context deadline exceeded"})})
    fact = ContainerRuntimes().process(docker.read(ContainerRuntimes.command))
    assert fact["status"] == "failed" and "500 context deadline exceeded" in fact["error"]


def test_container_and_image_state_read_one_document_each(stand_in_docker):
    from operations.facts.docker import ContainerState, ImageState

    docker = stand_in_docker({"/containers/milvus/json": (200, MILVUS_C),
                              "/images/lab/vllm:1/json": (200, docs.image("sha256:img1", labels={"io.gpufleet.inputs": "ab12"}))})
    assert docker.read(ContainerState().command(container="milvus"))[-1] == "__gpufleet_rc=0"
    assert ContainerState().process(docker.read(ContainerState().command(container="milvus"))) == {
        "exists": True, "running": True, "status": "running", "restarting": False, "spec": "77aa",
        "image_id": "sha256:img2", "image": "lab/milvus:2", "restart_count": 2}
    assert ContainerState().process(docker.read(ContainerState().command(container="gone")))["exists"] is False
    assert ImageState().process(docker.read(ImageState().command(ref="lab/vllm:1"))) == {
        "exists": True, "id": "sha256:img1", "labels": {"io.gpufleet.inputs": "ab12"}}
    assert ImageState().process(docker.read(ImageState().command(ref="lab/vllm:2")))["exists"] is False


def test_vllm_nccl_versions_checks_inside_only_the_containers_it_has_no_answer_for(stand_in_docker):
    from operations.facts.docker import VllmNcclVersions
    from operations.facts.docker_api import list_path

    replicas = [docs.container(f"vllm-node-vllm-{c}", cid=c, labels={SPEC_LABEL: "5d9d"}, image="lab/vllm:1",
                               image_id=f"sha256:img-{c}", started_at="2026-12-06T11:21:46Z") for c in ("a1", "d4")]
    # Arguments (before the top-level keys in dockerd's order) that look like keys of the document
    # (JSON escapes their quotes) or like a status line do not pose as them; nor does the environment.
    replicas[0]["Args"] = ['{"Name":"/impostor","Id":"ff"}', "__gpufleet_http=200"]
    replicas[0]["Mounts"] = [{"Type": "volume", "Name": "cache"}]
    docker = stand_in_docker({list_path("containers", label=[SPEC_LABEL], name=["^vllm-"]): (200, docs.listed(*replicas)),
                              **{p: (s, d) for p, s, d in docs.inspected(*replicas)}})
    first = VllmNcclVersions().process(docker.read(f"n=/leaked; s=x; export n s; {VllmNcclVersions().command()}"))
    assert first["containers"] == {"vllm-node-vllm-a1": "2.27.7", "vllm-node-vllm-d4": "2.27.3"}
    # The key `docker inspect --format '{{.Id}}@{{.Image}}@{{.State.StartedAt}}'` printed before: kept
    # answers still match after an upgrade.
    assert first["keys"]["vllm-node-vllm-a1"] == "a1@sha256:img-a1@2026-12-06T11:21:46Z"
    assert [c.split()[:2] for c in docker.cli_calls()] == [["exec", "a1"], ["exec", "d4"]]  # no `docker inspect`
    assert docker.asked()[1:] == ["/containers/a1/json", "/containers/d4/json"]  # one curl for both

    # a1's run already answered: only d4 is asked (its key changed: another start time).
    (docker.tmp_path / "calls").unlink()
    known = {first["keys"]["vllm-node-vllm-a1"]: "2.27.7", "d4@sha256:img-d4@2026-12-01T00:00:00Z": "2.27.7"}
    assert VllmNcclVersions().process(docker.read(VllmNcclVersions().command(known=known)))["containers"] == first["containers"]
    assert [c.split()[:2] for c in docker.cli_calls()] == [["exec", "d4"]]


def test_vllm_nccl_versions_leaves_out_a_replica_removed_after_the_list(stand_in_docker):
    from operations.facts.docker import VllmNcclVersions
    from operations.facts.docker_api import list_path

    replica = docs.container("vllm-node-vllm-a1", cid="a1", labels={SPEC_LABEL: "5d9d"})
    gone = docs.container("vllm-node-vllm-d4", cid="d4", labels={SPEC_LABEL: "5d9d"})
    docker = stand_in_docker({list_path("containers", label=[SPEC_LABEL], name=["^vllm-"]): (200, docs.listed(replica, gone)),
                              **{p: (s, d) for p, s, d in docs.inspected(replica)}})  # d4: 404
    found = VllmNcclVersions().process(docker.read(VllmNcclVersions().command()))
    assert found["status"] == "ok" and found["containers"] == {"vllm-node-vllm-a1": "2.27.7"}
    assert [c.split()[:2] for c in docker.cli_calls()] == [["exec", "a1"]]


def test_built_image_reads_both_images_in_one_call_and_the_marker_of_the_one_it_found(stand_in_docker, tmp_path):
    from operations.facts.images import CHECKED_DIR, BuiltImage

    built = docs.image("sha256:" + "9a" * 32, labels={"io.gpufleet.base-id": "sha256:5151"}, layers=["l1", "l2", "l3"])
    docker = stand_in_docker({"/images/gpufleet/vllm-rtx5090:6e73/json": (200, built),
                              "/images/vllm/vllm-openai:v0.21.0/json": (200, docs.image("sha256:5151", layers=["l1", "l2"]))})
    checked = tmp_path / "checked"
    checked.mkdir()
    (checked / f"{'0f' * 32}.json").write_text("{}")  # another image's marker
    command = BuiltImage().command(ref="gpufleet/vllm-rtx5090:6e73", base="vllm/vllm-openai:v0.21.0")
    read = lambda: BuiltImage().process(docker.read(command.replace(CHECKED_DIR, str(checked))))  # noqa: E731
    found = read()
    assert found["status"] == "ok" and found["checked"] is False
    assert found["image"] == {"id": built["Id"], "labels": {"io.gpufleet.base-id": "sha256:5151"}, "digests": [],
                              "layers": ["l1", "l2", "l3"]}
    assert found["base"]["id"] == "sha256:5151" and found["base"]["layers"] == ["l1", "l2"]
    assert docker.asked() == ["/images/gpufleet/vllm-rtx5090:6e73/json", "/images/vllm/vllm-openai:v0.21.0/json"]
    (checked / f"{'9a' * 32}.json").write_text("{}")  # the check passed in this image
    assert read()["checked"] is True
    # Not built: the image is None and not checked; the base is still read.
    gone = BuiltImage().process(docker.read(BuiltImage().command(ref="gpufleet/vllm-rtx5090:0000",
                                                                 base="vllm/vllm-openai:v0.21.0")))
    assert gone["status"] == "ok" and gone["image"] is None and gone["checked"] is False and gone["base"]


def _fact_commands():
    from operations.facts.container_runtime import ContainerRuntimes
    from operations.facts.docker import VllmNcclVersions
    from operations.facts.images import BuiltImage

    return [(GpuContainers, GpuContainers.command), (ContainerRuntimes, ContainerRuntimes.command),
            (VllmNcclVersions, VllmNcclVersions().command()),
            (BuiltImage, BuiltImage().command(ref="gpufleet/vllm-rtx5090:6e73", base="vllm/vllm-openai:v0.21.0"))]


@pytest.mark.parametrize("fact,command", _fact_commands(), ids=lambda v: getattr(v, "__name__", ""))
def test_a_docker_that_does_not_answer_fails_the_read_never_reads_as_no_containers(tmp_path, fact, command):
    import os

    from operations.facts.docker_api import SOCKET

    (tmp_path / "docker").write_text(FAKE_DOCKER)
    (tmp_path / "docker").chmod(0o755)
    # Nothing listens on the socket: a stopped dockerd (curl exits 7, "Couldn't connect to server").
    done = subprocess.run(["sh", "-c", command.replace(SOCKET, str(tmp_path / "docker.sock"))], capture_output=True,
                          text=True, env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert done.returncode == 0  # the envelope: the read's status is in its output
    found = fact().process(done.stdout.splitlines())
    # curl's words after "Failed to connect" differ between versions (7.81: the system's error).
    assert found["status"] == "failed" and found["exit_code"] == 7 and "Failed to connect" in found["error"]


def test_no_docker_installed_reads_as_missing(tmp_path):
    import os

    for fact, command in _fact_commands():
        done = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True,
                              env={**os.environ, "PATH": str(tmp_path)})  # no docker there
        assert fact().process(done.stdout.splitlines())["status"] == "missing", fact.__name__


def test_replica_names_come_from_one_list_with_the_kept_previous_one_left_out(stand_in_docker):
    from operations.facts.docker_api import list_path
    from operations.facts.rollout import VLLM_ROLE_LABEL, LiveReplicas, ReplicaContainers

    docker = stand_in_docker({
        list_path("containers", label=[VLLM_ROLE_LABEL]): (200, docs.listed(VLLM_C)),
        list_path("containers", all_states=True, label=[VLLM_ROLE_LABEL]): (200, docs.listed(VLLM_C, PREVIOUS_C))})
    systemctl = docker.tmp_path / "systemctl"  # a booted host whose docker.service is active
    systemctl.write_text('#!/bin/sh\ncase "$1" in is-system-running) echo running;; is-active) exit 0;; esac\n')
    systemctl.chmod(0o755)
    assert LiveReplicas().process(docker.read(LiveReplicas.command)) == ["vllm-node-vllm-0"]
    assert ReplicaContainers().process(docker.read(ReplicaContainers.command)) == ["vllm-node-vllm-0"]
    assert docker.asked() == [list_path("containers", label=[VLLM_ROLE_LABEL]),
                              list_path("containers", all_states=True, label=[VLLM_ROLE_LABEL])]


def test_no_secret_of_a_container_leaves_the_host_even_when_the_read_fails(stand_in_docker):
    """A real dockerd's inspect document (tests/fixtures/docker_api/) with an API key and an HF token
    in its Env, as --env-file puts them there: the facts' output, and so pyinfra's -vvv and
    drift's reports, never hold them; the rest of the document is read as before."""
    from operations.facts.container_runtime import ContainerRuntimes
    from operations.facts.docker import ContainerState
    from operations.facts.docker_api import list_path

    real = json.loads((Path(__file__).parents[1] / "fixtures/docker_api/vllm_container_inspect.json").read_text())
    secrets = ("sk-gpufleet-test-9f3c", "hf_test")
    assert all(any(s in e for e in real["Config"]["Env"]) for s in secrets)
    path = f"/containers/{real['Id']}/json"
    docker = stand_in_docker({list_path("containers", all_states=True): (200, [{"Id": real["Id"]}, {"Id": "ee" * 32}]),
                              path: (200, real), "/containers/vllm-gpu-node-1-vllm-0/json": (200, real),
                              f"/containers/{'ee' * 32}/json": (500, {"message": "dockerd restarting"})})
    out = docker.read(ContainerRuntimes.command)
    assert not any(s in line for line in out for s in secrets)
    assert any('"Env":null' in line for line in out) and any('"Args":["serve"' in line for line in out)
    fact = ContainerRuntimes().process(out)  # the second inspect failed: the read fails, naming why only
    assert fact["status"] == "failed" and fact["error"] == f"/containers/{'ee' * 32}/json: 500 dockerd restarting"
    state = ContainerState().process(docker.read(ContainerState().command(container="vllm-gpu-node-1-vllm-0")))
    assert state["spec"] == real["Config"]["Labels"]["io.gpufleet.spec"] and state["running"] is True


def test_a_host_with_docker_but_no_curl_fails_instead_of_reading_nothing_there(tmp_path):
    """ContainerState reads a failed read as "no such container": without curl, every container
    would look absent and the deploy would plan to create them. The host fails, saying why."""
    import os
    import shutil

    from pyinfra.api.exceptions import FactProcessError

    from operations.facts.docker import ContainerState

    for name in ("sh", "timeout", "sed", "grep", "cut"):  # a host's tools, without curl
        (tmp_path / name).symlink_to(shutil.which(name))
    (tmp_path / "docker").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "docker").chmod(0o755)
    done = subprocess.run(["/bin/sh", "-c", ContainerState().command(container="milvus")], capture_output=True,
                          text=True, env={**os.environ, "PATH": str(tmp_path)})
    assert done.stdout.splitlines()[-1] == "__gpufleet_rc=127"
    with pytest.raises(FactProcessError, match="curl: not found: gpufleet asks Docker through its API with curl"):
        ContainerState().process(done.stdout.splitlines())


def test_inspects_asked_in_one_curl_print_what_each_prints_alone(stand_in_docker):
    """operations/fact_batches.py: a plan's ContainerState reads (and ImageState's) in one curl,
    each read's stdout cut out of it byte for byte: a container that is there, one that is not (404),
    one whose name needs quoting in the URL."""
    from operations.facts.docker import ContainerState, ImageState

    docker = stand_in_docker({"/containers/milvus/json": (200, MILVUS_C),
                              f"/containers/{VLLM_ID}/json": (200, VLLM_C),
                              "/images/lab/vllm:1/json": (200, docs.image("sha256:img1"))})
    for fact, kwargs_list in ((ContainerState, [{"container": "milvus"}, {"container": "gone"}, {"container": VLLM_ID},
                                                {"container": "odd name"}]),
                              (ImageState, [{"ref": "lab/vllm:1"}, {"ref": "lab/vllm:0"}])):
        reader = fact.batch_reader
        before = len(docker.asked())
        batch = docker.read(reader.batch_command(kwargs_list))
        assert len(docker.asked()) - before == len(kwargs_list)  # one curl asked every path
        alone = [docker.read(fact().command(**kwargs)) for kwargs in kwargs_list]
        assert reader.batch_outputs(batch, kwargs_list) == alone
    assert ContainerState().process(alone_of_milvus := docker.read(ContainerState().command(container="milvus")))["exists"]
    assert alone_of_milvus[-1] == "__gpufleet_rc=0"


@pytest.mark.parametrize("lines", [
    ["curl: (7) Couldn't connect to server", "__gpufleet_rc=7"],  # the daemon does not answer
    ['{"Id":"x"}', "", "__gpufleet_http=200 http://docker/containers/other/json", "__gpufleet_rc=0"],  # not asked
    # curl exits with its last transfer's status: a failed one before it (000) left its error at the
    # top of the first answer, which would read as "no such container".
    ["curl: (52) Empty reply from server", '{"Id":"m"}', "", "__gpufleet_http=200 http://docker/containers/milvus/json",
     "", "__gpufleet_http=000 http://docker/containers/bad/json", "__gpufleet_rc=0"],
])
def test_an_inspect_batch_that_did_not_answer_every_path_answers_none(lines):
    from operations.facts.docker import ContainerState

    asked = [{"container": "milvus"}] + ([{"container": "bad"}] if "bad" in str(lines) else [])
    assert ContainerState.batch_reader.batch_outputs(lines, asked) is None
    assert ContainerState.batch_reader.batch_outputs(["__gpufleet_missing"], [{"container": "a"}, {"container": "b"}]) \
        == [["__gpufleet_missing"], ["__gpufleet_missing"]]


def test_an_inspect_batch_killed_at_its_limit_answers_each_read_as_timed_out():
    """Each read alone would have waited as long for the same hung daemon: each reads as timed out
    (the prefetch does not read such a read again), not as "read it again alone" (N more waits)."""
    from operations.facts.docker import ContainerState
    from operations.facts.util import ReadTimedOut

    lines = ['{"Id":"x"}', "", "__gpufleet_timeout=60", "__gpufleet_rc=124"]
    from operations.fact_batches import Batch, reader_of

    batch = Batch(reader_of(ContainerState), {"m": {"container": "milvus"}, "r": {"container": "rag-app"}})
    outputs = list(batch.answers(lines).values())
    assert outputs == [["__gpufleet_timeout=60", "__gpufleet_rc=124"]] * 2
    with pytest.raises(ReadTimedOut):
        ContainerState().process(outputs[0])
