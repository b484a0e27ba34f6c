"""The data tier in the lab: one Milvus (inventory group vector_db: gpu-node-2) that every node's
RAG app shares, the app behind lb-1, and Milvus reachable only on its host's private address."""

from __future__ import annotations

import json
import re
import shlex
import time
import uuid

import pytest

from gpufleet import PROJECT_ROOT
from gpufleet.fleet import load_fleet

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


def test_documents_ingested_through_the_lb_answer_queries_whichever_node_serves_them(serving, fleet):
    lb = serving["lb-1"]
    run = uuid.uuid4().hex[:6]
    # Words no shipped document has, and no earlier run either (the run's id is in each): what the
    # app retrieves for them can only be these documents. Every document repeats the run's own
    # word, so a query's second hit is another of them, not a shipped document. Short: two hits
    # and the question fit the lab model's 512-token window (its tokenizer is byte-level).
    common = f"fleet{run} " * 3
    topics = {f"ingest-{run}/{word}.md": f"{common}{word}{run} {thing}{run} checked weekly"
              for word, thing in (("zorbel", "quant"), ("plimsk", "trund"), ("vextor", "gramb"))}
    for source, text in topics.items():
        assert post(lb, "/documents", {"source": source, "text": text}) == {"source": source, "chunks": 1}
    # A re-ingest replaces the source's chunks (the same count, no duplicate rows).
    first = next(iter(topics))
    assert post(lb, "/documents", {"source": first, "text": topics[first]})["chunks"] == 1

    log_start = int(lb.run("wc -l < /var/log/nginx/access.log").stdout.strip() or 0)
    questions = [(f"{word}{run} {thing}{run} fleet{run}?", word)
                 for word, thing in (("zorbel", "quant"), ("plimsk", "trund"), ("vextor", "gramb"),
                                     ("zorbel", "fleet"), ("plimsk", "fleet"))]
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
