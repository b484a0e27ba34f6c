"""The serving stack on the lab: vLLM behind nginx, Milvus, the RAG app, Prometheus — all real."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpufleet import PROJECT_ROOT
from gpufleet.fleet import load_fleet
from gpufleet.lab.topology import lab_group_data

NODES = ("gpu-node-1", "gpu-node-2")


@pytest.fixture(scope="module")
def serving(deployed, hosts):
    return hosts


def test_completion_through_the_load_balancer(serving):
    lb = serving["lb-1"]
    # ignore_eos (a vLLM extension): the lab's tiny model may sample EOS early; the token count is
    # asserted exactly, so every answer must run to max_tokens.
    body = json.dumps({"model": "qwen3-tiny", "prompt": "The fleet", "max_tokens": 8, "ignore_eos": True})
    for _ in range(4):  # least_conn over both replicas: both answer through nginx
        out = lb.run(f"curl -fsS -m 120 -H 'Content-Type: application/json' -d '{body}' http://127.0.0.1/v1/completions")
        assert out.rc == 0, out.stderr
        answer = json.loads(out.stdout)
        assert answer["model"] == "qwen3-tiny" and answer["usage"]["completion_tokens"] == 8
    conf = lb.file("/etc/nginx/nginx.conf").content_string
    assert len(re.findall(r"server gpu-node-\d:8000", conf)) == 2


def test_streamed_completion_through_the_load_balancer(serving):
    body = json.dumps({"model": "qwen3-tiny", "prompt": "Hi", "max_tokens": 6, "stream": True,
                       "ignore_eos": True})
    out = serving["lb-1"].run(f"curl -fsSN -m 120 -H 'Content-Type: application/json' -d '{body}' "
                              "http://127.0.0.1/v1/completions")
    assert out.rc == 0 and out.stdout.count("data: ") >= 6 and "data: [DONE]" in out.stdout


def test_rag_app_answers_a_query_from_milvus_and_vllm(serving):
    node = serving["gpu-node-1"]
    out = node.run("curl -fsS -m 120 -X POST -d '{\"question\": \"How is NCCL pinned?\"}' http://gpu-node-1:8080/query")
    assert out.rc == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["model"] == "qwen3-tiny" and isinstance(answer["answer"], str)
    assert answer["sources"] and any("NCCL" in s["text"] for s in answer["sources"])


def test_milvus_is_healthy_and_stores_and_finds_vectors(serving):
    node = serving["gpu-node-2"]
    assert node.run("curl -fsS http://gpu-node-2:9091/healthz").stdout.strip() == "OK"
    # As root (a collection of its own, created and dropped: more than the app's user may), from this
    # machine on the lab network, in a child process with the password in its environment only.
    ip = node.run("getent ahostsv4 gpu-node-2 | awk 'NR==1{print $1}'").stdout.strip()
    root = lab_group_data()["milvus_root_password_file"]
    env = {**os.environ, "MILVUS_USER": "root", "MILVUS_PASSWORD": Path(root).read_text().strip()}
    out = subprocess.run([sys.executable, "-W", "ignore", str(Path(__file__).parent / "milvus_client.py"),
                          f"http://{ip}:19530"], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["ok"] is True and result["inserted"] == 100
    assert result["found_self"] == len(result["checked"]) == 5


def test_prometheus_scrapes_every_target_from_the_inventory(serving):
    fleet = load_fleet(str(PROJECT_ROOT / "inventory/lab.py"), cwd=str(PROJECT_ROOT))
    out = serving["lb-1"].run("curl -fsS http://127.0.0.1:9090/api/v1/targets")
    targets = json.loads(out.stdout)["data"]["activeTargets"]
    scraped = {(t["labels"]["job"], t["scrapeUrl"].split("/")[2]) for t in targets}
    for r in fleet.replicas:
        assert ("vllm", f"{r.address}:{r.port}") in scraped
    for node in fleet.nodes:
        for job, port in (("dcgm", 9400), ("gpu_monitor", 9401)):
            assert (job, f"{node.address}:{port}") in scraped
    # Milvus where it runs: the vector_db host only.
    assert {url for job, url in scraped if job == "milvus"} == {f"{fleet.vector_db.address}:9091"}
    for host in (*fleet.nodes, *fleet.load_balancers):  # node_exporter on every host
        assert ("node", f"{host.address}:9100") in scraped
    # A replica an earlier test recreated may still carry the error of the scrape that found it
    # restarting: every target must be up within two scrape intervals (15 s each).
    for _ in range(8):
        down = [(t["scrapeUrl"], t["lastError"]) for t in targets if t["health"] != "up"]
        if not down:
            break
        time.sleep(5)
        out = serving["lb-1"].run("curl -fsS http://127.0.0.1:9090/api/v1/targets")
        targets = json.loads(out.stdout)["data"]["activeTargets"]
    assert down == []


def test_nccl_inside_the_running_vllm_is_the_pin(serving):
    for name in NODES:
        out = serving[name].run(f"docker exec vllm-{name}-vllm-0 python3 /opt/gpufleet/vllm_nccl_check.py")
        assert json.loads(out.stdout)["nccl_version"] == "2.27.7"


def test_kv_cache_per_token_matches_the_planner(serving):
    from gpufleet.planner import dtype_from_args, plan_replica

    log = serving["gpu-node-1"].run("docker logs vllm-gpu-node-1-vllm-0 2>&1 | grep 'KV cache size'").stdout
    tokens = int(re.search(r"KV cache size: ([\d,]+) tokens", log).group(1).replace(",", ""))
    lab = lab_group_data()
    plan = plan_replica("lab-tiny-qwen3", 2, 32, 2, 512, 0.8, dtype=dtype_from_args(lab["vllm_extra_args"]))
    # VLLM_CPU_KVCACHE_SPACE=1 (GiB) per rank, split by the bytes each rank keeps per token.
    assert tokens == 2**30 // plan.kv_bytes_per_token_per_gpu


def test_the_welcome_urls_answer_on_this_machine(serving):
    """`make deploy` ends with URLs on 127.0.0.1: each one answers from here, as a newcomer would try it."""
    import urllib.request

    from gpufleet.lab.welcome import welcome_text

    text = welcome_text()
    urls = re.findall(r"http://127\.0\.0\.1:\d+/\S+", text)
    assert len(urls) >= 5, text
    completion = next(u for u in urls if u.endswith("/v1/completions"))
    body = json.dumps({"model": "qwen3-tiny", "prompt": "The fleet", "max_tokens": 4}).encode()
    request = urllib.request.Request(completion, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as answer:
        assert json.load(answer)["choices"][0]["text"] is not None
    for url in (u for u in urls if u.endswith(("/targets", "/health"))):
        with urllib.request.urlopen(url, timeout=30) as answer:
            assert answer.status == 200, url
