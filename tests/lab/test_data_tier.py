"""The data tier in the lab: one Milvus (inventory group vector_db: gpu-node-2) that every node's
RAG app shares, the app behind lb-1, and Milvus reachable only on its host's private address.
A Milvus upgrade through the rollout is tested with Milvus on a host of its own, the production
placement (tests/lab/test_data_host.py)."""

from __future__ import annotations

import datetime
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from gpufleet import PROJECT_ROOT
from gpufleet.fleet import load_fleet
from gpufleet.lab.topology import lab_group_data
from gpufleet.backup_store import staging_root
from tests.s3_server import s3_server

APP_LB_PORT = 8080  # lb_app_port's default: lb-1 serves the app here


@pytest.fixture(scope="module")
def serving(deployed, hosts):
    return hosts


@pytest.fixture(scope="module")
def fleet():
    return load_fleet(str(PROJECT_ROOT / "inventory/lab.py"), cwd=str(PROJECT_ROOT))


def post(lb, path: str, body: dict) -> dict:
    out = lb.run(f"curl -sS -m 120 -o /dev/stdout -w '\\n%{{http_code}}' -H 'Content-Type: application/json' "
                 f"-d {shlex.quote(json.dumps(body))} http://127.0.0.1:{APP_LB_PORT}{path}")
    assert out.rc == 0, out.stderr
    text, _, code = out.stdout.rpartition("\n")
    assert code == "200", f"{path} answered {code}: {text[:500]}"
    return json.loads(text)


def milvus_env(who: str) -> dict[str, str]:
    """This process's environment plus MILVUS_USER/MILVUS_PASSWORD of the lab's ``root`` or ``app`` user
    (read from the lab's control-side files: never on a command line)."""
    data = lab_group_data()
    user, key = ("root", "milvus_root_password_file") if who == "root" else ("gpufleet_app", "milvus_app_password_file")
    return {**os.environ, "MILVUS_USER": user, "MILVUS_PASSWORD": Path(data[key]).read_text().strip()}


def private_ip(node, name: str) -> str:
    return node.run(f"getent ahostsv4 {name} | awk 'NR==1{{print $1}}'").stdout.strip()


def test_one_milvus_on_the_vector_db_host_and_every_app_uses_it(serving, fleet):
    db = fleet.vector_db
    assert db is not None and db.name == "gpu-node-2" and db.is_gpu_node
    ip = private_ip(serving[db.name], db.name)
    for node in fleet.nodes:
        names = serving[node.name].run("docker ps --format '{{.Names}}'").stdout.split()
        assert "rag-app" in names
        assert ("milvus-standalone" in names) == (node.name == db.name), f"{node.name} runs {names}"
        env = serving[node.name].run("docker inspect --format '{{range .Config.Env}}{{println .}}{{end}}' rag-app")
        assert f"MILVUS_URI=http://{ip}:19530" in env.stdout.splitlines()


def _run_texts(run: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """``(documents, [(question, the word of the document it must find first)])`` of one run.

    Words no shipped document has, and no earlier run either (the run's id is in each): what the
    app retrieves for them can only be these documents. Every document repeats the run's own word,
    so a query's second hit is another of them, not a shipped document. Each question repeats it as
    the documents do. Short: two hits and the question fit the lab model's 512-token window.
    """
    common = f"fleet{run} " * 3
    pairs = (("zorbel", "quant"), ("plimsk", "trund"), ("vextor", "gramb"))
    topics = {f"ingest-{run}/{word}.md": f"{common}{word}{run} {thing}{run} checked weekly" for word, thing in pairs}
    questions = [(f"{word}{run} {thing}{run} {common}?", word)
                 for word, thing in (*pairs, ("zorbel", "fleet"), ("plimsk", "fleet"))]
    return topics, questions


def _distinct_run() -> str:
    """A run id whose words the lab app's embedding tells apart.

    The lab app embeds by feature hashing into 256 signed buckets (lab/images/rag-app/rag.py): for
    some run ids two of the made-up words share a bucket and a question's own document no longer
    ranks first (about one run in six, counted over 2,000 ids). This test is about the wiring (the
    lb, both nodes' apps, one Milvus), not the hashing: it takes an id for which the embedding
    itself ranks each question's document first with a margin, and a sibling second, over the
    shipped chunks too, and then asserts that the real system answers exactly that.
    """
    sys.path.insert(0, str(PROJECT_ROOT / "lab/images/rag-app"))
    import rag  # the lab app's pure logic (stdlib only)

    shipped = rag.documents_to_rows({p.name: p.read_text() for p in (PROJECT_ROOT / "lab/images/rag-app/docs").iterdir()
                                     if p.suffix in (".md", ".txt")})
    for _ in range(200):
        run = uuid.uuid4().hex[:6]
        topics, questions = _run_texts(run)
        own = {source: rag.embed(text) for source, text in topics.items()}
        for question, word in questions:
            q = rag.embed(question)
            ranked = sorted(((rag.cosine(q, v), source) for source, v in own.items()), reverse=True)
            best_shipped = max(rag.cosine(q, r["vector"]) for r in shipped)
            # Its document first, clearly; the second hit (top_k 2) a sibling, clearly above any shipped chunk.
            if (ranked[0][1] != f"ingest-{run}/{word}.md" or ranked[0][0] - ranked[1][0] < 0.02
                    or ranked[1][0] - best_shipped < 0.02):
                break
        else:
            return run
    raise AssertionError("no run id in 200 whose words the lab app's embedding tells apart")


def test_documents_ingested_through_the_lb_answer_queries_whichever_node_serves_them(serving, fleet):
    lb = serving["lb-1"]
    run = _distinct_run()
    topics, questions = _run_texts(run)
    for source, text in topics.items():
        assert post(lb, "/documents", {"source": source, "text": text}) == {"source": source, "chunks": 1}
    # A re-ingest replaces the source's chunks (the same count, no duplicate rows).
    first = next(iter(topics))
    assert post(lb, "/documents", {"source": first, "text": topics[first]})["chunks"] == 1

    log_start = int(lb.run("wc -l < /var/log/nginx/access.log").stdout.strip() or 0)
    answers = 0
    for i in range(20):
        question, word = questions[i % len(questions)]
        reply = post(lb, "/query", {"question": question, "top_k": 2})
        sources = [s["source"] for s in reply["sources"]]
        assert sources and set(sources) <= set(topics), f"{question!r}: sources {sources}"
        assert sources[0] == f"ingest-{run}/{word}.md", f"{question!r}: sources {sources}"
        assert reply["model"] == "qwen3-tiny" and isinstance(reply["answer"], str)
        answers += 1
    assert answers == 20
    # Both nodes' apps answered: nginx logged each query's upstream (files/nginx/nginx.conf.j2).
    time.sleep(1)  # nginx writes its access log line after the response
    lines = lb.run(f"tail -n +{log_start + 1} /var/log/nginx/access.log").stdout.splitlines()
    queries = [line for line in lines if '"POST /query ' in line]
    assert len(queries) == 20
    upstreams = {re.search(r"upstream=(\S+)", line).group(1) for line in queries}
    node_ips = {f"{private_ip(serving[n.name], n.name)}:8080" for n in fleet.nodes}
    assert upstreams == node_ips, f"queries went to {upstreams}, nodes' apps are {node_ips}"


def test_a_restarted_app_keeps_what_was_ingested(serving):
    """An app's start re-indexes only its image's documents, never what clients ingested."""
    lb = serving["lb-1"]
    source = f"ingest-{uuid.uuid4().hex[:8]}/quorple.md"
    post(lb, "/documents", {"source": source, "text": "quorple snarfhelm gauges read quorple snarfhelm pressure"})
    for name in ("gpu-node-1", "gpu-node-2"):
        serving[name].run("docker restart rag-app >/dev/null")
    for name in ("gpu-node-1", "gpu-node-2"):
        healthy = serving[name].run(
            f"for i in $(seq 1 90); do curl -fs -o /dev/null http://{name}:8080/health && exit 0; sleep 1; done; exit 1")
        assert healthy.rc == 0, f"{name}'s app is not healthy after a restart"
    reply = post(lb, "/query", {"question": "What do quorple snarfhelm gauges read?", "top_k": 1})
    assert [s["source"] for s in reply["sources"]] == [source]


def test_milvus_listens_only_on_its_hosts_private_address(serving, fleet):
    db = fleet.vector_db
    node = serving[db.name]
    ip = private_ip(node, db.name)
    ports = node.run("docker port milvus-standalone").stdout.split("\n")
    published = sorted(line.split(" -> ")[1] for line in ports if " -> " in line)
    assert published == [f"{ip}:19530", f"{ip}:9091"], published
    # Not on the host's loopback, nor on any other interface: only the private address answers.
    assert node.run("curl -s -m 3 -o /dev/null http://127.0.0.1:9091/healthz").rc != 0
    assert node.run(f"curl -fsS -m 3 http://{ip}:9091/healthz").stdout.strip() == "OK"
    # etcd and MinIO publish nothing (embedded here; in standalone mode on the private Docker network only).
    listening = node.run("ss -Hltn").stdout
    for port in (2379, 9000, 9001):
        assert not re.search(rf":{port}\s", listening), f"port {port} listens on {db.name}:\n{listening}"
    # The app's node reaches Milvus over the private network.
    other = next(n.name for n in fleet.nodes if n.name != db.name)
    assert serving[other].run(f"curl -fsS -m 3 http://{ip}:9091/healthz").stdout.strip() == "OK"
    # The real Milvus server runs (and answered above) under Docker's default seccomp profile.
    security = node.run("docker inspect --format '{{json .HostConfig.SecurityOpt}}' milvus-standalone").stdout
    assert "seccomp" not in security, security
    assert "seccomp" in node.run("docker info --format '{{json .SecurityOptions}}'").stdout  # the engine has it


# Each probe logs in (or not) and tries one thing; it prints what Milvus said, never a password.
AUTH_PROBE = """
import json, os, sys
from pymilvus import MilvusClient

def attempt(user, password, action):
    try:
        client = MilvusClient(uri=sys.argv[1], timeout=20, user=user, password=password)
        action(client)
        return "ok"
    except Exception as exc:
        text = str(exc)
        for word in ("UNAUTHENTICATED", "PERMISSION_DENIED", "permission deny", "auth check failure"):
            if word in text:
                return "refused: " + word
        return "error: " + type(exc).__name__

app, root = os.environ["MILVUS_APP_PASSWORD"], os.environ["MILVUS_ROOT_PASSWORD"]
print(json.dumps({
    "anonymous": attempt("", "", lambda c: c.list_collections()),
    "root with Milvus's default": attempt("root", "Milvus", lambda c: c.list_collections()),
    "app with root's password": attempt("gpufleet_app", root, lambda c: c.list_collections()),
    "root": attempt("root", root, lambda c: c.list_collections()),
    "app searches its collection": attempt("gpufleet_app", app, lambda c: c.search(
        "gpufleet_docs", [[0.0] * 255 + [1.0]], limit=1)),
    "app drops its collection": attempt("gpufleet_app", app, lambda c: c.drop_collection("gpufleet_docs")),
    "app creates a user": attempt("gpufleet_app", app, lambda c: c.create_user("intruder", "intruder-pw-1")),
}))
"""


def test_milvus_has_no_default_credentials_and_the_app_user_only_its_grants(serving, fleet):
    """Authentication is on (the container's COMMON_SECURITY_AUTHORIZATIONENABLED, a root-only env
    file for root's first password), nobody gets in anonymously or with Milvus's default root
    password, and the app's own user may search its collection but neither drop it nor make users."""
    db = serving[fleet.vector_db.name]
    env = db.run("docker inspect --format '{{range .Config.Env}}{{println .}}{{end}}' milvus-standalone").stdout
    assert "COMMON_SECURITY_AUTHORIZATIONENABLED=true" in env.splitlines()
    auth_file = db.file("/etc/gpufleet/milvus/auth.env")
    assert auth_file.is_file and auth_file.mode == 0o600 and auth_file.user == "root"
    for node in fleet.nodes:  # every app logs in as the app's user; its password is in the 0600 env file
        app_env = serving[node.name].run("docker inspect --format '{{range .Config.Env}}{{println .}}{{end}}' rag-app")
        assert "MILVUS_USER=gpufleet_app" in app_env.stdout.splitlines()
        assert serving[node.name].file("/etc/gpufleet/rag-app.env").mode == 0o600
    root, app = milvus_env("root"), milvus_env("app")
    env = {**os.environ, "MILVUS_ROOT_PASSWORD": root["MILVUS_PASSWORD"], "MILVUS_APP_PASSWORD": app["MILVUS_PASSWORD"]}
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", AUTH_PROBE,
                          f"http://{private_ip(db, fleet.vector_db.name)}:19530"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found == {
        "anonymous": "refused: UNAUTHENTICATED", "root with Milvus's default": "refused: UNAUTHENTICATED",
        "app with root's password": "refused: UNAUTHENTICATED", "root": "ok", "app searches its collection": "ok",
        "app drops its collection": "refused: PERMISSION_DENIED", "app creates a user": "refused: PERMISSION_DENIED",
    }, found


# The users check's two clients (gpufleet/milvus_rpc.py's read-only one, pymilvus's) asked the same.
USERS_CHECK_BOTH_WAYS = """
import json, sys
from pymilvus import MilvusClient  # first: milvus_rpc then loads pymilvus's stubs as usual
from gpufleet import milvus_users as mu

uri, root_file, app_file, user, collection = sys.argv[1:6]
root_pw, app_pw = mu.read_password(root_file), mu.read_password(app_file)
role, original = mu.role_name(user), mu.login

def both():
    read_only = mu.plan(uri, root_pw, user, app_pw, [collection], fix=False)
    mu.login = lambda u, name, password, changes=True: original(u, name, password, changes=True)
    try:
        with_pymilvus = mu.plan(uri, root_pw, user, app_pw, [collection], fix=False)
    finally:
        mu.login = original
    return {"read-only client": read_only, "pymilvus": with_pymilvus}

root = MilvusClient(uri=uri, user="root", password=root_pw, timeout=20)
out = {"as deployed": both()}
try:
    root.revoke_privilege(role, "Collection", "Search", collection)
    root.revoke_role(user, role)
    out["a grant and the role taken away"] = both()
finally:
    root.grant_role(user, role)
    root.grant_privilege(role, "Collection", "Search", collection)
out["given back"] = both()
print(json.dumps(out))
"""


def test_the_users_check_finds_what_pymilvus_finds_on_a_real_milvus(serving, fleet):
    """The read-only client the deploy's users check uses (no pymilvus import: gpufleet/milvus_rpc.py)
    and pymilvus's own client report the same changes, with Milvus as deployed and with a grant and
    the app's role taken away by hand."""
    db = serving[fleet.vector_db.name]
    settings = fleet.vector_db.settings
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", USERS_CHECK_BOTH_WAYS,
                          f"http://{private_ip(db, fleet.vector_db.name)}:19530", settings.milvus_root_secret(),
                          settings.milvus_app_secret(), settings.milvus_app_user, "gpufleet_docs"],
                         capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    role = f"{settings.milvus_app_user}_role"
    taken = [f"give {settings.milvus_app_user} role {role}", f"grant {role} Search on Collection gpufleet_docs"]
    assert found == {"as deployed": {"read-only client": [], "pymilvus": []},
                     "a grant and the role taken away": {"read-only client": taken, "pymilvus": taken},
                     "given back": {"read-only client": [], "pymilvus": []}}, found


def backup_drift(fleet, backup_dir, **s3) -> list[str]:
    """Drift's findings about the backups in ``backup_dir`` (the Milvus host checked, nothing else
    drifted there), as a nightly drift with a backup schedule would report them; ``s3``: the
    ``milvus_backup_s3_*`` settings of a bucket."""
    from gpufleet import drift as engine

    report = engine.check("inventory/lab.py", limit=(fleet.vector_db.name,),
                          overrides={"milvus_backup_dir": str(backup_dir), "milvus_backup_max_age_h": 26, **s3})
    [host] = report.hosts
    assert host.checked, host.error
    assert all(item.check == "Milvus backup" for item in host.items), [vars(i) for i in host.items]
    return [item.cause for item in host.items]


def test_backup_then_lost_volumes_then_restore_gives_back_the_same_rows_and_answers(serving, fleet, tmp_path):
    """Ingest, back up, destroy Milvus's volume, deploy (an empty Milvus), restore: the same row
    counts, and the same top-k sources for a fixed set of questions."""
    from tests.lab.conftest import deploy, gpufleet

    lb, db = serving["lb-1"], serving[fleet.vector_db.name]
    run = uuid.uuid4().hex[:6]
    for word in ("alpha", "bravo", "charlie"):
        post(lb, "/documents", {"source": f"backup-{run}/{word}.md", "text": f"{word}{run} lever {word}{run} gauge"})
    questions = [f"{word}{run} lever" for word in ("alpha", "bravo", "charlie")]
    # Top-k ids straight from Milvus for a fixed query set over everything stored (the image's
    # documents too, whose chunks are too long for the lab model's window through the app), asked
    # from this machine at the Milvus host's address on the lab network.
    searches = questions + ["How is NCCL pinned?", "Which driver runs the GPUs?", "Where does Milvus listen?"]
    milvus_uri = f"http://{private_ip(db, fleet.vector_db.name)}:19530"

    def top_ids() -> list[list]:  # per search: [score, id] of the top 5 above the 6th's score, then that score
        # In a child process: gRPC in this one would hang the next fork (gpufleet's subprocesses).
        script = ("import importlib.util, json, os, sys\n"
                  "from pymilvus import MilvusClient\n"
                  "spec = importlib.util.spec_from_file_location('rag', sys.argv[1])\n"
                  "rag = importlib.util.module_from_spec(spec); spec.loader.exec_module(rag)\n"
                  "client = MilvusClient(uri=sys.argv[2], timeout=30, user=os.environ['MILVUS_USER'],\n"
                  "                      password=os.environ['MILVUS_PASSWORD'])\n"
                  "found = client.search('gpufleet_docs', [rag.embed(q) for q in json.loads(sys.argv[3])], limit=10,\n"
                  "                      consistency_level='Strong', search_params={'params': {'ef': 256}})\n"
                  # The top 5 as far as scores decide it: the hashing embedding ties, and which of the
                  # hits tied with the 6th is in the top 5 is arbitrary. Ties inside are ordered by id.
                  "out = []\n"
                  "for hits in found:\n"
                  "    ranked = sorted(([round(h['distance'], 5), h['id']] for h in hits), reverse=True)\n"
                  "    cut = ranked[5][0] if len(ranked) > 5 else -2\n"
                  "    out.append([r for r in ranked[:5] if r[0] > cut] + [cut])\n"
                  "print(json.dumps(out))\n")
        out = subprocess.run([sys.executable, "-W", "ignore", "-c", script, str(PROJECT_ROOT / "lab/images/rag-app/rag.py"),
                              milvus_uri, json.dumps(searches)], capture_output=True, text=True, timeout=120,
                             env=milvus_env("app"))  # the app's user: searching its collection is its job
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout)

    def answers() -> list[list[tuple[str, str]]]:  # through lb-1 and the app: short prompts only
        # top_k 1: each question's best hit is its own document; the next ones tie (they share "lever").
        return [[(s["source"], s["text"]) for s in post(lb, "/query", {"question": q, "top_k": 1})["sources"]]
                for q in questions]

    before, ids_before = answers(), top_ids()
    assert [hits[0][0] for hits in before] == [f"backup-{run}/{w}.md" for w in ("alpha", "bravo", "charlie")]
    assert all(len(ids) >= 2 for ids in ids_before)  # at least one hit decided by its score
    made = gpufleet("backup", "inventory/lab.py", "--to", str(tmp_path), "--json", check=False)
    assert made.returncode == 0, made.stderr[-2000:]
    result = json.loads(made.stdout)
    manifest = json.loads((tmp_path / "lab" / result["dir"].rsplit("/", 1)[1] / "manifest.json").read_text())
    assert manifest["collections"]["gpufleet_docs"]["rows"] == result["collections"]["gpufleet_docs"] > 3
    assert manifest["source"]["host"] == fleet.vector_db.name
    assert oct((tmp_path / "lab").stat().st_mode & 0o777) == "0o700"

    # Drift reads the backups where the nightly timer would keep them (milvus_backup_dir).
    assert backup_drift(fleet, tmp_path) == []

    # The volume is lost; the next deploy starts an empty Milvus, and drift says what went.
    assert db.run("docker rm -f milvus-standalone >/dev/null && docker volume rm milvus-data").rc == 0
    redeployed = deploy()
    assert redeployed["rc"] == 0, redeployed["stderr"][-3000:]
    rows = result["collections"]["gpufleet_docs"]
    assert backup_drift(fleet, tmp_path) == [f"rows dropped since the last backup: gpufleet_docs has 0, {rows} in "
                                             f"{Path(result['dir']).name}"]
    # A damaged backup is refused before anything is written.
    data_file = Path(result["dir"]) / "gpufleet_docs.jsonl"
    original = data_file.read_bytes()
    data_file.write_bytes(original.replace(b"lever", b"LEVER", 1))
    refused = gpufleet("restore", "inventory/lab.py", "--from", result["dir"], check=False)
    assert refused.returncode == 1 and "does not match its sha256" in refused.stderr
    data_file.write_bytes(original)
    restored = gpufleet("restore", "inventory/lab.py", "--from", result["dir"], "--json", check=False)
    assert restored.returncode == 0, restored.stderr[-2000:]
    assert json.loads(restored.stdout)["collections"] == result["collections"]
    assert answers() == before and top_ids() == ids_before
    assert backup_drift(fleet, tmp_path) == []
    # No backup where the timer writes, and one that is three days old.
    assert backup_drift(fleet, tmp_path / "none") == [f"no backup of lab in {tmp_path / 'none'}"]
    stale = tmp_path / "stale" / "lab" / Path(result["dir"]).name
    shutil.copytree(result["dir"], stale)
    old_manifest = json.loads((stale / "manifest.json").read_text())
    three_days = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3)
    (stale / "manifest.json").write_text(json.dumps({**old_manifest, "created": three_days.strftime("%Y-%m-%dT%H:%M:%SZ")}))
    assert backup_drift(fleet, tmp_path / "stale") == ["the newest backup is 72 h old (at most 26 h)"]

    # The same through an S3-compatible bucket (`rclone serve s3` on 127.0.0.1, tests/s3_server.py),
    # reached with the Milvus host's milvus_backup_s3_* settings: a backup that leaves nothing on
    # the control host, drift reading it, and a restore --replace from it.
    with s3_server(tmp_path / "s3") as s3:
        s3.make_bucket("fleet-backups")
        access = {"milvus_backup_s3_endpoint": s3.endpoint, "milvus_backup_s3_credentials_file": str(s3.credentials_file)}
        data = [arg for key, value in access.items() for arg in ("--data", f"{key}={value}")]
        made = gpufleet("backup", "inventory/lab.py", "--to", "s3://fleet-backups/milvus", *data, "--json", check=False)
        assert made.returncode == 0, made.stderr[-2000:]
        in_bucket = json.loads(made.stdout)
        assert in_bucket["dir"].startswith("s3://fleet-backups/milvus/lab/")
        assert in_bucket["collections"] == result["collections"]
        objects = sorted(p.name for p in (s3.root / "fleet-backups").rglob("*") if p.is_file())
        assert objects == ["gpufleet_docs.jsonl", "manifest.json"]
        assert not list(staging_root().glob(f"lab-{in_bucket['dir'].rsplit('/', 1)[1]}-*"))  # nothing stays here
        assert backup_drift(fleet, "s3://fleet-backups/milvus", **access) == []
        restored = gpufleet("restore", "inventory/lab.py", "--from", in_bucket["dir"], "--replace", *data, "--json",
                            check=False)
        assert restored.returncode == 0, restored.stderr[-2000:]
        assert json.loads(restored.stdout)["collections"] == result["collections"]
        assert answers() == before and top_ids() == ids_before
        assert not list(staging_root().glob("restore-*"))
        assert s3.secret_key not in made.stdout + made.stderr + restored.stdout + restored.stderr
    # Restoring over a collection that has rows is refused unless --replace.
    again = gpufleet("restore", "inventory/lab.py", "--from", result["dir"], check=False)
    assert again.returncode == 1 and "exists with" in again.stderr and "--replace" in again.stderr
