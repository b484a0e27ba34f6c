"""Model weights staged before serving (operations/weights.py, files/stage_hub_weights.py).

The URL staging's shell runs here for real under ``sh`` (dash, as pyinfra runs it on Debian
and Ubuntu: curl from a local HTTP server on 127.0.0.1, sha256sum, GNU tar, find, mawk), and so
does the fact's command on what it staged; the hub verifier
runs on a Hugging Face cache built by hand (blobs named by their hashes, snapshot symlinks).
"""

import hashlib
import http.server
import io
import json
import subprocess
import tarfile
import threading
from functools import partial
from pathlib import Path
from urllib.parse import urlencode

import pytest

from files.stage_hub_weights import NotVerified, bad_files, forget, verify_snapshot, write_marker
from operations import vllm, weights
from operations.facts.weights import MANIFEST, MARKER, StagedWeights


def _tar(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    """An archive of ``files`` ({name: content}) and symbolic ``links`` ({name: target})."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.SYMTYPE, target
            tar.addfile(link)
    return buf.getvalue()


@pytest.fixture
def mirror(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www: production's internal model mirror."""
    www = tmp_path / "www"
    www.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _sh(script: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60, env=env)


def _fact(directory: str) -> dict:
    out = _sh(StagedWeights().command(directory))
    return StagedWeights().process(out.stdout.splitlines())


MODEL = {"tiny/config.json": b'{"model_type": "qwen3"}', "tiny/model.safetensors": b"\x00" * 1000,
         "tiny/tokenizer.json": b"{}"}


def test_url_archive_is_staged_verified_and_then_left_alone(tmp_path, mirror):
    www, base = mirror
    archive = _tar(MODEL)
    (www / "tiny.tar").write_bytes(archive)
    sha = hashlib.sha256(archive).hexdigest()
    models = tmp_path / "models"
    out = _sh(weights.url_stage_command(f"{base}/tiny.tar", sha, str(models), 60))
    assert out.returncode == 0, out.stderr
    staged = models / sha
    # The archive's one directory is the model; its files, a manifest that checks, the marker last.
    assert sorted(p.name for p in staged.iterdir()) == sorted(["config.json", "model.safetensors", "tokenizer.json",
                                                               MANIFEST, MARKER])
    assert _sh(f"cd {staged} && sha256sum -c --quiet {MANIFEST}").returncode == 0
    marker = json.loads((staged / MARKER).read_text())
    assert marker == {"source": "url", "url": f"{base}/tiny.tar", "sha256": sha, "files": 3, "bytes": 1025}
    assert not list((models / ".incoming").iterdir())  # nothing left half-done
    assert not [p for p in models.iterdir() if ".replaced-" in p.name]
    state = _fact(str(staged))
    assert weights.staged_matches(state, "url", sha)
    # A weight file truncated on the node: no longer staged (the next deploy stages again).
    (staged / "model.safetensors").write_bytes(b"\x00" * 10)
    assert not weights.staged_matches(_fact(str(staged)), "url", sha)
    assert _sh(weights.url_stage_command(f"{base}/tiny.tar", sha, str(models), 60)).returncode == 0
    assert weights.staged_matches(_fact(str(staged)), "url", sha)


def test_a_checksum_that_is_not_the_pin_stages_nothing(tmp_path, mirror):
    www, base = mirror
    (www / "tiny.tar").write_bytes(_tar(MODEL))
    wrong = "0" * 64
    models = tmp_path / "models"
    out = _sh(weights.url_stage_command(f"{base}/tiny.tar", wrong, str(models), 60))
    assert out.returncode == 1
    assert f"not the pinned {wrong}" in out.stderr and "nothing staged" in out.stderr
    assert not (models / wrong).exists() and not list((models / ".incoming").iterdir())
    assert _fact(str(models / wrong)) == {"marker": None, "files": 0, "bytes": 0}


def test_an_archive_without_a_model_and_a_missing_url_are_refused(tmp_path, mirror):
    www, base = mirror
    junk = _tar({"notes.txt": b"hello"})
    (www / "junk.tar").write_bytes(junk)
    models = tmp_path / "models"
    out = _sh(weights.url_stage_command(f"{base}/junk.tar", hashlib.sha256(junk).hexdigest(), str(models), 60))
    assert out.returncode == 1 and "holds no config.json" in out.stderr
    out = _sh(weights.url_stage_command(f"{base}/absent.tar", "1" * 64, str(models), 60))
    assert out.returncode == 1 and f"downloading {base}/absent.tar failed" in out.stderr
    assert sorted(p.name for p in models.iterdir()) == [".incoming"]


def _hub_cache(root: Path, files: dict[str, bytes], lfs: set[str]) -> Path:
    """A cache laid out as huggingface_hub lays it out: blobs/<hash>, snapshots/<commit>/<file> -> blob."""
    repo = root / "hub" / "models--org--tiny"
    snapshot = repo / "snapshots" / ("c" * 40)
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        digest = (hashlib.sha256(data).hexdigest() if name in lfs
                  else hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest())
        (repo / "blobs" / digest).write_bytes(data)
        (snapshot / name).symlink_to(Path("../../blobs") / digest)
    return snapshot


def test_hub_snapshot_every_file_checked_against_its_blob_name(tmp_path):
    snapshot = _hub_cache(tmp_path, {"config.json": b"{}", "model.safetensors": b"w" * 4096}, {"model.safetensors"})
    assert verify_snapshot(snapshot) == (2, 4098)
    write_marker(snapshot, "org/tiny", snapshot.name, 2, 4098)
    directory = weights.hub_snapshot_dir(str(tmp_path), "org/tiny", "c" * 40)
    assert weights.staged_matches(_fact(directory), "hub", "c" * 40)
    assert not weights.staged_matches(_fact(directory), "hub", "d" * 40)  # another revision pinned
    # No revision pinned: the snapshot refs/main names is the one staged.
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("c" * 40)
    assert weights.staged_matches(_fact(weights.hub_snapshot_dir(str(tmp_path), "org/tiny", None)), "hub", None)
    # A blob whose bytes changed (a mirror that served others, a bad disk): refused.
    blob = (snapshot / "model.safetensors").resolve()
    blob.write_bytes(b"x" * 4096)
    with pytest.raises(NotVerified, match="model.safetensors: content hashes to"):
        verify_snapshot(snapshot)
    (snapshot / "config.json").resolve().unlink()
    with pytest.raises(NotVerified, match="config.json: its blob .* is missing"):
        verify_snapshot(snapshot)


def test_the_replica_serves_the_staged_directory_offline():
    spec = vllm.replica_spec(name="vllm-n-0", image="img", model="qwen3-tiny", served_model_name="qwen3-tiny", port=8000,
                             gpus=[0, 1], bind_address="10.0.0.11", tensor_parallel_size=2, max_model_len=512,
                             gpu_memory_utilization=0.8, model_dir="/var/lib/gpufleet/models/" + "a" * 64, offline=True)
    assert spec.command[0] == weights.MODEL_MOUNT
    assert f"/var/lib/gpufleet/models/{'a' * 64}:{weights.MODEL_MOUNT}:ro" in spec.volumes
    assert spec.env["HF_HUB_OFFLINE"] == "1"
    hub = vllm.replica_spec(name="vllm-n-0", image="img", model="Qwen/Qwen3-32B-AWQ", served_model_name="q", port=8000,
                            gpus=[0, 1], bind_address="10.0.0.11", tensor_parallel_size=2, max_model_len=512,
                            gpu_memory_utilization=0.8, revision="e" * 40, offline=True)
    assert hub.command[0] == "Qwen/Qwen3-32B-AWQ" and "--revision" in hub.command and hub.env["HF_HUB_OFFLINE"] == "1"


def test_hub_download_runs_in_the_image_with_the_token_file_never_the_token():
    cmd = weights.hub_stage_command("gpufleet/vllm-rtx5090:abc", "Qwen/Qwen3-32B-AWQ", "e" * 40,
                                    "/var/lib/gpufleet/hf-cache", "/var/lib/gpufleet/build/vllm/stage_hub_weights.py",
                                    "/etc/gpufleet/hf-token.env", "https://hf-mirror.internal", 7200)
    assert cmd.startswith("timeout 7200 docker run --rm --network host")
    assert "--env-file /etc/gpufleet/hf-token.env" in cmd and "HF_TOKEN" not in cmd
    assert "-e HF_ENDPOINT=https://hf-mirror.internal" in cmd and "HF_HUB_OFFLINE" not in cmd
    assert cmd.endswith(f"--model Qwen/Qwen3-32B-AWQ --revision {'e' * 40}")


def test_what_an_interrupted_run_left_does_not_stop_the_next(tmp_path, mirror):
    www, base = mirror
    archive = _tar(MODEL)
    (www / "tiny.tar").write_bytes(archive)
    sha = hashlib.sha256(archive).hexdigest()
    models = tmp_path / "models"
    for leftover in (f".incoming/{sha}", f".incoming/{sha}.one/tiny", f".incoming/{sha}.part"):
        (models / leftover).mkdir(parents=True)  # what earlier layouts or a kill -9 could leave
    (models / sha).mkdir()  # a staged directory without its marker: not staged
    (models / sha / "config.json").write_text("{}")
    assert _sh(weights.url_stage_command(f"{base}/tiny.tar", sha, str(models), 60)).returncode == 0
    assert weights.staged_matches(_fact(str(models / sha)), "url", sha)


def test_an_archive_with_links_is_refused(tmp_path, mirror):
    www, base = mirror
    archive = _tar(MODEL, links={"tiny/tokenizer_config.json": "/etc/hostname"})
    (www / "linked.tar").write_bytes(archive)
    models = tmp_path / "models"
    out = _sh(weights.url_stage_command(f"{base}/linked.tar", hashlib.sha256(archive).hexdigest(),
                                        str(models), 60))
    assert out.returncode == 1 and "holds symbolic links" in out.stderr
    assert sorted(p.name for p in models.iterdir()) == [".incoming"]


def test_byte_counts_past_2_gib_are_exact(tmp_path):
    """mawk's %d stops at 2^31-1; weights are tens of GB (a sparse file: no disk used)."""
    staged = tmp_path / "big"
    staged.mkdir()
    size = 3 * 1024 ** 3 + 7
    with open(staged / "model.safetensors", "wb") as f:
        f.truncate(size)
    (staged / "config.json").write_text("{}")
    (staged / MARKER).write_text(json.dumps({"source": "url", "sha256": "a", "files": 2, "bytes": size + 2}))
    (staged / (MARKER + ".tmp")).write_text("half a marker")  # not counted, as the staging does not
    state = _fact(str(staged))
    assert (state["files"], state["bytes"]) == (2, size + 2)
    assert weights.staged_matches(state, "url", "a")


def test_damaged_hub_files_are_found_and_forgotten_so_they_download_again(tmp_path):
    snapshot = _hub_cache(tmp_path, {"config.json": b"{}", "model.safetensors": b"w" * 4096}, {"model.safetensors"})
    (snapshot / (MARKER + ".tmp")).write_text("cut short")  # a marker write that never finished: ignored
    assert bad_files(snapshot)[2] == []
    blob = (snapshot / "model.safetensors").resolve()
    blob.write_bytes(b"w" * 100)
    files, size, bad = bad_files(snapshot)
    assert (files, size) == (1, 2) and [link.name for link, _ in bad] == ["model.safetensors"]
    forget(bad)
    assert not blob.exists() and not (snapshot / "model.safetensors").exists()
    assert (snapshot / "config.json").resolve().exists()  # the good file stays


def test_hub_staging_downloads_damaged_files_again_and_writes_the_marker_last(tmp_path, monkeypatch):
    """files/stage_hub_weights.main with the hub's download replaced by one that lays out the cache
    as huggingface_hub does (and, like it, trusts a blob that exists)."""
    import sys
    import types

    from files import stage_hub_weights

    data = b"w" * 4096
    snapshot = _hub_cache(tmp_path, {"model.safetensors": data}, {"model.safetensors"})
    blob = (snapshot / "model.safetensors").resolve()
    downloads = []

    def snapshot_download(repo_id, revision):
        downloads.append(repo_id)
        if not (snapshot / "model.safetensors").exists():  # fetches only what is missing
            blob.write_bytes(data)
            (snapshot / "model.safetensors").symlink_to(Path("../../blobs") / blob.name)
        return str(snapshot)

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download))
    assert stage_hub_weights.main(["--model", "org/tiny", "--revision", "c" * 40]) == 0
    assert json.loads((snapshot / MARKER).read_text())["bytes"] == 4096 and len(downloads) == 1
    blob.write_bytes(b"x" * 4096)  # damaged on the node
    assert stage_hub_weights.main(["--model", "org/tiny", "--revision", "c" * 40]) == 0
    assert len(downloads) == 3 and blob.read_bytes() == data  # found, forgotten, fetched once more
    assert json.loads((snapshot / MARKER).read_text())["revision"] == "c" * 40


def test_archives_no_replica_needs_are_found_and_the_rest_kept(tmp_path, stand_in_docker):
    """The fact's command under sh on a models directory, and what retain would remove from it."""
    import os

    from operations.facts.weights import StagedArchives

    models = tmp_path / "models"
    names = {"a" * 64: 100, "b" * 64: 300, "c" * 64: 200, "c" * 64 + ".replaced-1764900000": 400}
    for name, mtime in names.items():
        (models / name).mkdir(parents=True)
        os.utime(models / name, (mtime, mtime))
    (models / ".incoming").mkdir()
    (models / "backup-of-my-model").mkdir()  # not ours: never listed, never removed
    fact = StagedArchives()
    # A Docker (tests/unit/fake_docker_api.py) that answers and mounts "b..." only; a container on
    # "c..." started at 1764800000, before its replaced copy; then one whose engine does not answer.
    volume = lambda d, all_states: ("/containers/json?" + ("all=1&" if all_states else "")  # noqa: E731
                                    + urlencode({"filters": json.dumps({"volume": [f"{models}/{d * 64}"]})}))
    docker = stand_in_docker({"/_ping": (200, "OK"), volume("a", True): (200, []), volume("b", True): (200, [{"Id": "1f2e3d"}]),
                              volume("c", True): (200, [{"Id": "4c5b6a"}]), volume("c", False): (200, [{"Id": "4c5b6a"}]),
                              "/containers/4c5b6a/json": (200, {"Id": "4c5b6a",
                                                                "State": {"StartedAt": "2025-12-03T22:13:20.5Z"}})})
    found = fact.process(_sh(docker.aimed(fact.command(str(models))), env=docker.env).stdout.splitlines())
    assert sorted((a["name"], a["mtime"], a["mounted"]) for a in found) == sorted(
        (n, m, 1 if n[0] in "bc" else 0) for n, m in names.items())
    # Kept: "c" (pinned), "b" (mounted, and the newest other: a rollback's way back), the replaced
    # copy of "c" (a replica started before the replacement still has it mounted); "a" goes.
    assert weights.archives_to_remove(found, keep="c" * 64) == ["a" * 64]
    restarted = [{**a, "mounted": 0} if ".replaced" in a["name"] else a for a in found]
    assert weights.archives_to_remove(restarted, keep="c" * 64) == ["a" * 64, "c" * 64 + ".replaced-1764900000"]
    mounted_a = [{**a, "mounted": int(a["name"].startswith("a"))} for a in restarted]  # "a" in use: kept too
    assert weights.archives_to_remove(mounted_a, keep="c" * 64) == ["c" * 64 + ".replaced-1764900000"]
    # A Docker that answers its ping, then fails a list (an error status, or stopped meanwhile):
    # that archive is "unknown", kept.
    docker.close()
    failing = stand_in_docker({"/_ping": (200, "OK"), volume("b", True): (200, [{"Id": "1f2e3d"}]),
                               volume("c", True): (200, [{"Id": "4c5b6a"}]),
                               volume("c", False): (500, {"message": "stand-in: dockerd restarting"})})
    found = {a["name"]: a["mounted"] for a in
             fact.process(_sh(failing.aimed(fact.command(str(models))), env=failing.env).stdout.splitlines())}
    assert found == {"a" * 64: 1, "b" * 64: 1, "c" * 64: 1, "c" * 64 + ".replaced-1764900000": 1}
    assert weights.archives_to_remove([{"name": n, "mtime": 1, "mounted": m} for n, m in found.items()],
                                      keep="c" * 64) == []
    failing.close()  # no engine: nothing can be proven unmounted, nothing goes
    found = fact.process(_sh(docker.aimed(fact.command(str(models))), env=docker.env).stdout.splitlines())
    assert {a["mounted"] for a in found} == {1} and weights.archives_to_remove(found, keep="c" * 64) == []
    assert fact.process(_sh(fact.command(str(tmp_path / "absent"))).stdout.splitlines()) == []
