"""Milvus and RAG app: settings, the container specs of both Milvus modes, and the app's retrieval logic."""

import importlib.util
import math
from pathlib import Path

import pytest

from gpufleet.settings import HostSettings, validate_host_data
from operations.app import app_spec, vllm_url
from operations.milvus import EMBED_ETCD_YAML, MILVUS_COMMAND, credentials_command, milvus_specs

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("rag", ROOT / "lab/images/rag-app/rag.py")
rag = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rag)

GPU_NODE = {"gpu_count": 2, "gpu_memory_gib": 31.84}


def issues(data):
    _, found = validate_host_data("gpu-node-01", {**GPU_NODE, **data})
    return {i.key: i.expected for i in found if i.severity == "error"}


# --- settings --------------------------------------------------------------------------------------

def test_lab_data_validates():
    assert issues({"milvus_mode": "embedded", "milvus_image": "lab-registry:5000/gpufleet-lab/milvus:2.3.5",
                   "app_image": "lab-registry:5000/gpufleet-lab/rag-app:1"}) == {}


@pytest.mark.parametrize(("key", "value", "fragment"), [
    ("milvus_mode", "cluster", "'standalone' or 'embedded'"),
    ("milvus_etcd_image", "quay.io/coreos/etcd:latest", "not :latest"),
    ("milvus_minio_image", "minio/minio", "explicit tag"),
    ("app_image", "registry.internal/rag-app", "explicit tag"),
    ("milvus_bind_address", "gpu-node-1", "IP address literal"),
    ("app_bind_address", "::1", "IPv4"),
    ("milvus_volume", "../etc", "pattern"),
    ("app_vllm_target", "replica", "'node' or 'lb'"),
    ("app_env", {"MILVUS_URI": "http://elsewhere:19530"}, "MILVUS_URI"),
    ("milvus_health_port", 80, "greater than or equal to 1024"),
])
def test_bad_data_values_are_refused(key, value, fragment):
    found = issues({key: value})
    assert key in found and fragment in found[key], found


def test_port_clashes_are_reported():
    s = HostSettings(**GPU_NODE, milvus_health_port=19530)
    assert [p[0] for p in s.data_problems()] == ["milvus_health_port"]
    s = HostSettings(**GPU_NODE, app_image="r/app:1", app_port=8000)  # the default replica's port
    assert s.data_problems() == [("app_port", 8000, "a port other than vLLM replica vllm-0's")]
    assert HostSettings(**GPU_NODE, app_port=8000).data_problems() == []  # no app: no clash


# --- Milvus container specs ------------------------------------------------------------------------

def test_embedded_is_one_container_like_standalone_embed():
    [spec] = milvus_specs("embedded", "milvusdb/milvus:v2.6.11", "10.0.0.5")
    assert spec.name == "milvus-standalone" and spec.command == MILVUS_COMMAND
    assert spec.env["ETCD_USE_EMBED"] == "true" and spec.env["COMMON_STORAGETYPE"] == "local"
    assert "milvus-data:/var/lib/milvus" in spec.volumes
    assert spec.ports == ["10.0.0.5:19530:19530", "10.0.0.5:9091:9091"]  # 2379 not published
    assert "listen-client-urls: http://0.0.0.0:2379" in EMBED_ETCD_YAML


def test_standalone_is_etcd_minio_milvus_on_a_private_network():
    etcd, minio, milvus = milvus_specs("standalone", "milvusdb/milvus:v2.6.11", "10.0.0.5", network="milvus")
    assert [s.name for s in (etcd, minio, milvus)] == ["milvus-etcd", "milvus-minio", "milvus-standalone"]
    assert all(s.networks == ["milvus"] for s in (etcd, minio, milvus))
    assert etcd.ports == [] and minio.ports == []  # reachable only on the private network
    assert milvus.env == {"ETCD_ENDPOINTS": "milvus-etcd:2379", "MINIO_ADDRESS": "milvus-minio:9000"}
    assert milvus.command == ["milvus", "run", "standalone"]
    assert etcd.image == "quay.io/coreos/etcd:v3.5.25" and minio.image.startswith("minio/minio:RELEASE.")


@pytest.mark.parametrize("mode", ["embedded", "standalone"])
def test_every_published_port_is_on_the_given_address(mode):
    for spec in milvus_specs(mode, "milvusdb/milvus:v2.6.11", "10.0.0.5", port=29530, health_port=29091):
        for port in spec.ports:
            assert port.startswith("10.0.0.5:"), port
            assert "--publish 10.0.0.5:" in spec.run_command()


def test_changing_a_setting_changes_only_that_containers_digest():
    old = milvus_specs("standalone", "milvusdb/milvus:v2.6.11", "10.0.0.5")
    new = milvus_specs("standalone", "milvusdb/milvus:v2.6.12", "10.0.0.5")
    assert [a.digest() == b.digest() for a, b in zip(old, new)] == [True, True, False]


def test_minio_never_runs_with_default_credentials_and_milvus_reads_the_same_generated_file():
    etcd, minio, milvus = (spec.run_command() for spec in milvus_specs("standalone", "milvusdb/milvus:v2.6.11",
                                                                       "10.0.0.5"))
    assert "minioadmin" not in " ".join([etcd, minio, milvus])
    assert "MINIO_ACCESS_KEY" not in minio and "MINIO_ROOT" not in minio  # no value on a command line
    assert "--env-file /etc/gpufleet/milvus/minio.env " in minio
    assert "--env-file /etc/gpufleet/milvus/minio.env " in milvus
    assert "--env-file" not in etcd


def test_milvus_runs_under_dockers_default_seccomp_profile_unless_a_host_opts_out():
    for mode in ("embedded", "standalone"):
        assert all("seccomp" not in s.run_command() for s in milvus_specs(mode, "milvusdb/milvus:v2.6.11", "10.0.0.5"))
        opted = milvus_specs(mode, "milvusdb/milvus:v2.6.11", "10.0.0.5", seccomp_unconfined=True)[-1]
        assert "--security-opt seccomp=unconfined" in opted.run_command()


def test_a_raised_credentials_generation_recreates_minio_and_milvus_not_etcd():
    old = milvus_specs("standalone", "milvusdb/milvus:v2.6.11", "10.0.0.5")
    new = milvus_specs("standalone", "milvusdb/milvus:v2.6.11", "10.0.0.5", credentials_generation=2)
    assert [a.digest() == b.digest() for a, b in zip(old, new)] == [True, False, False]


def test_generated_credentials_are_random_root_only_and_never_on_the_command_line(tmp_path):
    import os
    import stat
    import subprocess

    path = tmp_path / "milvus" / "minio.env"
    command = credentials_command(str(path), 3)
    first = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30)
    assert first.returncode == 0 and first.stdout == "" and first.stderr == ""
    lines = path.read_text().splitlines()
    assert lines[0] == "# gpufleet-generation 3"
    values = dict(line.split("=", 1) for line in lines[1:])
    assert sorted(values) == ["MINIO_ACCESS_KEY_ID", "MINIO_ROOT_PASSWORD", "MINIO_ROOT_USER", "MINIO_SECRET_ACCESS_KEY"]
    assert values["MINIO_ROOT_USER"] == values["MINIO_ACCESS_KEY_ID"] and len(values["MINIO_ROOT_USER"]) >= 16
    assert values["MINIO_ROOT_PASSWORD"] == values["MINIO_SECRET_ACCESS_KEY"]
    assert len(values["MINIO_ROOT_PASSWORD"]) == 48 and values["MINIO_ROOT_PASSWORD"] not in command
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["minio.env"]  # no temporary file left
    subprocess.run(["sh", "-c", command], check=True, timeout=30)
    assert dict(line.split("=", 1) for line in path.read_text().splitlines()[1:]) != values  # new values


# --- app wiring ------------------------------------------------------------------------------------

def test_app_spec_carries_urls_model_and_binds_privately():
    spec = app_spec("r/app:1", "10.0.0.5", 8080, "http://10.0.0.5:8000/v1", "qwen3-32b-awq", "http://10.0.0.5:19530")
    assert spec.ports == ["10.0.0.5:8080:8080"]
    assert spec.env["VLLM_API_URL"] == "http://10.0.0.5:8000/v1" and spec.env["VLLM_MODEL"] == "qwen3-32b-awq"
    assert spec.env["MILVUS_URI"] == "http://10.0.0.5:19530"


def test_vllm_target():
    assert vllm_url("node", "10.0.0.5", 8000, "10.0.1.10", 80) == ("10.0.0.5", 8000)
    assert vllm_url("lb", "10.0.0.5", 8000, "10.0.1.10", 80) == ("10.0.1.10", 80)
    with pytest.raises(ValueError, match="load balancer"):
        vllm_url("lb", "10.0.0.5", 8000, None)


# --- the app's retrieval logic (lab/images/rag-app/rag.py) -----------------------------------------

def test_embedding_is_deterministic_normalised_and_sized():
    a, b = rag.embed("Milvus health on port 9091"), rag.embed("Milvus health on port 9091")
    assert a == b and len(a) == rag.DEFAULT_DIM
    assert math.isclose(sum(x * x for x in a), 1.0)
    assert rag.embed("!!!") == [0.0] * rag.DEFAULT_DIM
    assert len(rag.embed("x", dim=64)) == 64


def test_similar_texts_are_closer_than_unrelated_ones():
    q = rag.embed("which port serves the milvus healthz endpoint")
    near = rag.embed("Milvus serves /healthz on port 9091")
    far = rag.embed("Blackwell needs the open kernel modules and driver branch 570")
    assert rag.cosine(q, near) > rag.cosine(q, far)


def test_chunking_packs_paragraphs_and_windows_long_ones():
    assert rag.chunk("# Title\n\nshort paragraph here") == ["# Title short paragraph here"]
    long = " ".join(f"w{i}" for i in range(10))
    assert rag.chunk(long, max_words=4, overlap=1) == ["w0 w1 w2 w3", "w3 w4 w5 w6", "w6 w7 w8 w9"]
    assert rag.chunk("a b c\n\nd e f", max_words=4, overlap=0) == ["a b c", "d e f"]
    with pytest.raises(ValueError):
        rag.chunk("a", max_words=4, overlap=4)


def test_rows_have_stable_ids_and_the_prompt_numbers_sources():
    docs = {"a.md": "alpha beta gamma", "b.md": "delta epsilon"}
    rows = rag.documents_to_rows(docs, dim=16)
    assert [r["source"] for r in rows] == ["a.md", "b.md"]
    assert [r["id"] for r in rows] == [r["id"] for r in rag.documents_to_rows(docs, dim=16)]
    assert all(0 <= r["id"] < 2**63 for r in rows)
    system, user = rag.build_messages("what?", [{"source": "a.md", "text": "alpha"}])
    assert system["role"] == "system" and "[1] (a.md) alpha" in user["content"]
    assert user["content"].endswith("Question: what?")
