"""Milvus on a host of its own, as production places it: db-1 joins the lab (`gpufleet lab up
--data-hosts 1`) as the inventory's vector_db host, a deploy moves every node's RAG app to it, a
backup of gpu-node-2's Milvus is restored onto db-1's fresh one, and a Milvus "upgrade" (a second
tag of the lab's Milvus image) goes through `gpufleet rollout` under app load through lb-1.

Runs just before tests/lab/test_rollout.py (tests/lab/conftest.py) and leaves db-1 in place: the
rollout tests then run against the production placement too, and the next session's lab fixture
(`gpufleet lab up` with the default shape) removes db-1, its first deploy moving the apps back to
gpu-node-2's Milvus, whose data was never touched.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from gpufleet import PROJECT_ROOT
from gpufleet.fleet import load_fleet
from gpufleet.lab.topology import REGISTRY_LOCAL_PORT, lab_group_data, read_hosts_file
from operations.facts.rollout import LOCK_PATH
from tests.lab.conftest import LAB_SHAPE, deploy, gpufleet, host_over_ssh
from tests.lab.steady_load import SteadyLoad, rollout
from tests.lab.test_data_tier import post

DB = "db-1"


@pytest.fixture(scope="module")
def moved(deployed, hosts, tmp_path_factory):
    """Before the move: a document ingested through lb-1 into gpu-node-2's Milvus, and a backup of
    that Milvus (``(source, the run's id in its words, backup result)``), to restore on db-1."""
    # Words of this run only: a kept lab's Milvus still holds an earlier run's document.
    run = uuid.uuid4().hex[:6]
    source = f"moved-{run}/vrillix.md"
    post(hosts["lb-1"], "/documents", {"source": source, "text": f"vrillix{run} quandorp{run} valves vrillix{run} "
                                                                  f"quandorp{run} seals"})
    made = gpufleet("backup", "inventory/lab.py", "--to", str(tmp_path_factory.mktemp("before-move")), "--json",
                    check=False)
    assert made.returncode == 0, made.stderr[-2000:]
    return source, run, json.loads(made.stdout)


@pytest.fixture(scope="module")
def on_db_host(moved, hosts, tmp_path_factory):
    """The lab with db-1 as its Milvus host, converged: ``(fleet, {host: testinfra host})``."""
    up = gpufleet("lab", "up", *LAB_SHAPE, "--data-hosts", "1", check=False)
    assert up.returncode == 0, up.stderr[-3000:]
    moved = deploy()
    assert moved["rc"] == 0, moved["stderr"][-4000:]
    db = next(h for h in read_hosts_file() if h.name == DB)
    return load_fleet(str(PROJECT_ROOT / "inventory/lab.py"), cwd=str(PROJECT_ROOT)), {
        **hosts, DB: host_over_ssh(db, tmp_path_factory)}


def upgrade_image() -> tuple[str, str]:
    """``(the repository's Milvus image, a second tag of it in the lab registry)``."""
    repo_image = lab_group_data()["milvus_image"]  # lab-registry:5000/gpufleet-lab/milvus:<tag>
    local = f"127.0.0.1:{REGISTRY_LOCAL_PORT}/{repo_image.split('/', 1)[1]}"
    for command in (["docker", "pull", "-q", local], ["docker", "tag", local, f"{local}-upgrade"],
                    ["docker", "push", "-q", f"{local}-upgrade"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{command}: {done.stderr[-1000:]}"
    return repo_image, f"{repo_image}-upgrade"


def test_the_apps_move_to_the_milvus_host_of_its_own(on_db_host):
    fleet, hosts = on_db_host
    assert fleet.vector_db.name == DB and not fleet.vector_db.is_gpu_node
    ip = hosts[DB].run(f"getent ahostsv4 {DB} | awk 'NR==1{{print $1}}'").stdout.strip()
    assert "milvus-standalone" in hosts[DB].run("docker ps --format '{{.Names}}'").stdout.split()
    for node in fleet.nodes:
        env = hosts[node.name].run("docker inspect --format '{{range .Config.Env}}{{println .}}{{end}}' rag-app")
        assert f"MILVUS_URI=http://{ip}:19530" in env.stdout.splitlines(), node.name


def test_a_backup_restored_onto_the_fresh_milvus_host_answers_what_was_ingested_before_the_move(on_db_host, moved):
    """The way data moves to a new Milvus host: the backup taken from gpu-node-2 restored onto
    db-1's fresh Milvus (whose collection holds only what the apps index at start)."""
    fleet, hosts = on_db_host
    source, run, backup = moved
    question = {"question": f"What do vrillix{run} quandorp{run} valves hold?", "top_k": 1}
    assert [s["source"] for s in post(hosts["lb-1"], "/query", question)["sources"]] != [source]  # not there yet
    restored = gpufleet("restore", "inventory/lab.py", "--from", backup["dir"], "--replace", "--json", check=False)
    assert restored.returncode == 0, restored.stderr[-2000:]
    assert json.loads(restored.stdout)["collections"] == backup["collections"]
    assert [s["source"] for s in post(hosts["lb-1"], "/query", question)["sources"]] == [source]


def test_a_milvus_upgrade_on_its_own_host_is_rolled_first_keeps_the_data_and_fails_no_app_request(
        on_db_host, moved, tmp_path):
    """`gpufleet rollout` takes db-1 first, alone: lock, backup, update in place (nothing drained),
    Milvus answers, row counts kept, unlock; the app answers through lb-1 the whole time (its
    queries wait for Milvus, they do not fail)."""
    fleet, hosts = on_db_host
    repo_image, new_image = upgrade_image()

    def rows() -> dict[str, int]:
        made = gpufleet("backup", "inventory/lab.py", "--to", str(tmp_path / "check"), "--json", check=False)
        assert made.returncode == 0, made.stderr[-2000:]
        return json.loads(made.stdout)["collections"]

    def milvus_image() -> str:
        return hosts[DB].run("docker inspect --format '{{.Config.Image}}' milvus-standalone").stdout.strip()

    with SteadyLoad(clients=0, app_clients=2, pause_s=1.0) as load:
        deadline = time.monotonic() + 120
        while load.app_ok < 2 and not load.failures and time.monotonic() < deadline:
            time.sleep(1)  # each client has ingested its document and been answered
        before = rows()
        assert before and all(n > 0 for n in before.values())
        code, report, err = rollout("--data", f"milvus_image={new_image}", state_dir=tmp_path / "state")
        assert code == 0, err[-3000:]
        answered_during = load.app_ok
    assert not load.failures, load.failures[:5]
    assert answered_during > 10
    assert milvus_image() == new_image
    assert report["batches"] == [[DB]]  # the GPU nodes had nothing to change
    node = report["nodes"][DB]
    assert node["state"] == "done" and node["kind"] == "" and node["data_rows"] == before
    assert [state for state, _ in node["history"]] == ["updating", "validating", "done"]  # never drained
    assert json.loads((Path(node["data_backup"]) / "manifest.json").read_text())["source"]["host"] == DB
    assert f"Milvus host {DB}: backed up, updated in place, row counts checked" in err
    assert "Milvus backed up to" in err
    assert not hosts[DB].file(LOCK_PATH).exists  # unlocked
    assert rows() == before
    # Milvus reloads its collections after the restart, and the rollout's row check must leave them
    # so: the app still answers after the rollout (a released collection fails every query).
    source, run, _ = moved
    reply = post(hosts["lb-1"], "/query", {"question": f"What do vrillix{run} quandorp{run} valves hold?", "top_k": 1})
    assert [s["source"] for s in reply["sources"]] == [source]
