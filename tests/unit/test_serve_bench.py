"""`gpufleet bench serve` against stand-in streaming servers on 127.0.0.1 (tests/unit/stream_standin.py).

No request leaves this machine: every target is a stand-in bound to 127.0.0.1, given either with
--url or as the private address of a test inventory's node.
"""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from gpufleet.cli import main
from gpufleet.fleet import Fleet, FleetHost
from gpufleet.servebench import results, run
from gpufleet.servebench.client import run_level, stream_completion
from gpufleet.settings import HostSettings
from tests.unit.doctor_node import REPO
from tests.unit.stream_standin import StreamStandin


def test_one_streaming_request_is_timed_token_by_token():
    with StreamStandin(token_s=0.01, first_token_s=0.05, api_key="k3y") as s:
        r = stream_completion(s.url, "qwen3-32b-awq", list(range(100, 140)), 12, api_key="k3y")
    assert r.ok and r.error is None
    assert r.output_tokens == 12 and r.prompt_tokens == 40
    assert 0.05 <= r.ttft < 5  # the stand-in waits 50 ms before the first token
    # 11 gaps of >= 10 ms each on the server; a loaded client may read two chunks at once, so
    # single gaps can be short, but together they cannot be shorter than the server's sleeps
    assert len(r.itls) == 11 and sum(r.itls) >= 0.11 * 0.95
    assert r.latency >= r.ttft + sum(r.itls) * 0.99
    sent = s.requests[0]
    assert sent["auth"] == "Bearer k3y" and sent["stream"] is True and sent["ignore_eos"] is True
    assert sent["stream_options"] == {"include_usage": True} and sent["prompt"] == list(range(100, 140))


def test_tokens_whose_text_is_held_back_still_count_as_tokens():
    with StreamStandin(token_s=0.005, empty_text=True) as s:
        r = stream_completion(s.url, "qwen3-tiny", [1, 2, 3], 6)
    assert r.ok and r.error is None and r.output_tokens == 6 and len(r.itls) == 5


def test_a_refused_request_is_a_failure_with_its_reason():
    with StreamStandin(api_key="right") as s:
        r = stream_completion(s.url, "m", [1, 2], 4, api_key="wrong")
    assert not r.ok and r.error.startswith("HTTP 401") and r.output_tokens == 0


def test_nothing_listening_is_a_failure_not_a_crash():
    with StreamStandin() as s:
        url = s.url
    r = stream_completion(url, "m", [1], 2, timeout=5)
    assert not r.ok and "Error" in r.error


def test_a_level_keeps_exactly_its_concurrency_in_flight():
    with StreamStandin(token_s=0.005, first_token_s=0.02) as s:
        level = run_level(s.url, "m", concurrency=4, requests=16, input_len=32, output_len=8)
    assert len(level.results) == 16 and all(r.ok for r in level.results)
    assert s.max_in_flight == 4
    assert {len(req["prompt"]) for req in s.requests} == {32}
    assert len({tuple(req["prompt"]) for req in s.requests}) == 16, "every request its own prompt (no prefix cache)"
    row = results.summarize("a", level)
    assert row["output_tokens"] == 128 and row["failed"] == 0
    assert row["output_tok_per_s"] == pytest.approx(128 / level.duration, rel=0.01)
    assert row["ttft_ms_p50"] >= 20 and row["itl_ms_p99"] >= 5
    assert row["ttft_ms_p99"] >= row["ttft_ms_p50"] and row["itl_ms_p99"] >= row["itl_ms_p50"]


def test_failed_requests_are_counted_and_make_exit_2():
    with StreamStandin(fail_every=3) as s:
        outcome = run.benchmark([run.Target("lb-1", s.url)], "m", [2], 9, 8, 4)
    (row,) = outcome["rows"]
    assert row["failed"] == 3 and row["requests"] == 9 and "HTTP 500" in row["errors"][0]
    assert run.exit_code(outcome) == 2


def test_the_slow_target_is_flagged_against_the_median():
    with StreamStandin(token_s=0.002) as a, StreamStandin(token_s=0.002) as b, StreamStandin(token_s=0.02) as slow:
        outcome = run.benchmark([run.Target("n1", a.url), run.Target("n2", b.url), run.Target("n3", slow.url)],
                                "m", [2], 6, 16, 16, warn_below=30, through="node")
    assert len(outcome["warnings"]) == 1 and outcome["warnings"][0].startswith("n3 at concurrency 2:")
    assert "below the fleet median" in outcome["warnings"][0]
    assert run.exit_code(outcome) == 2
    table = results.render(outcome)
    assert "OUT TOK/S" in table and "TTFT p99" in table and "warning: n3" in table


def row(target, tps, concurrency=8):
    return {"target": target, "concurrency": concurrency, "output_tok_per_s": tps}


def test_median_warning_threshold_and_its_neighbours():
    assert results.slow_targets([row("a", 100), row("b", 100), row("c", 79)], 20) == [
        "c at concurrency 8: 79.0 output tok/s, 21% below the fleet median 100.0 (threshold 20%)"]
    assert results.slow_targets([row("a", 100), row("b", 100), row("c", 81)], 20) == []
    assert results.slow_targets([row("a", 10)], 20) == [], "one target has nothing to be compared with"
    # levels are compared within themselves: slow at 32 is not judged against speeds at 1
    assert results.slow_targets([row("a", 100, 1), row("b", 100, 1), row("a", 50, 32), row("b", 50, 32)], 20) == []


def test_percentiles():
    assert results.percentile([], 50) is None
    assert results.percentile([5.0], 99) == 5.0
    assert results.percentile(list(map(float, range(1, 101))), 99) == pytest.approx(99.01)


def test_runs_are_kept_side_by_side_and_compared(tmp_path):
    first = {"started": 1_800_000_000, "config": {"through": "lb"}, "rows": [
        {"target": "lb-1", "concurrency": 8, "output_tok_per_s": 100.0, "ttft_ms_p50": 50.0}], "warnings": []}
    second = {**first, "rows": [{"target": "lb-1", "concurrency": 8, "output_tok_per_s": 80.0, "ttft_ms_p50": 70.0}]}
    a, b = results.save(first, tmp_path), results.save(second, tmp_path)
    assert a != b and a.name == "20270115T080000Z-lb.json" and b.name == "20270115T080000Z-lb-1.json"
    assert json.loads(a.read_text())["rows"][0]["output_tok_per_s"] == 100.0
    text = results.compare(first, second)
    assert "lb-1" in text and "-20%" in text and "50.0" in text and "70.0" in text


def node(name, address, **data) -> FleetHost:
    settings = HostSettings(gpu_count=2, gpu_memory_gib=31.84, private_address=address, **data)
    return FleetHost(name, ["gpu_nodes"], settings, {})


def test_targets_from_the_inventory():
    lb = FleetHost("lb-01", ["lb"], HostSettings(private_address="10.40.0.21", lb_port=80), {})
    fleet = Fleet({"gpu-node-01": node("gpu-node-01", "10.40.1.11"), "gpu-node-02": node("gpu-node-02", "10.40.1.12"),
                   "lb-01": lb})
    assert run.targets(fleet, "lb") == [run.Target("lb-01", "http://10.40.0.21:80")]
    assert run.targets(fleet, "node") == [run.Target("gpu-node-01-vllm-0", "http://10.40.1.11:8000"),
                                          run.Target("gpu-node-02-vllm-0", "http://10.40.1.12:8000")]
    assert run.targets(fleet, "node", limit=("*-02",)) == [run.Target("gpu-node-02-vllm-0", "http://10.40.1.12:8000")]
    assert run.model_and_key(fleet) == ("qwen3-32b-awq", None)
    # Settings refuse IPv6 addresses for now; the client brackets one anyway, should they come.
    assert run._host("fd00::12") == "[fd00::12]" and run._host("10.40.1.12") == "10.40.1.12"


@pytest.fixture
def inventory(tmp_path):
    """A one-node inventory whose two TP=1 replicas are served by stand-ins on 127.0.0.1."""
    repo = tmp_path / "repo"
    (repo / "inventory").mkdir(parents=True)
    shutil.copytree(REPO / "group_data", repo / "group_data", ignore=shutil.ignore_patterns("lab.py"))
    key = tmp_path / "api-key"
    key.write_text("bench-key-5f2a9c\n")

    def write(ports):
        replicas = [{"name": f"vllm-{i}", "gpus": [i], "port": p} for i, p in enumerate(ports)]
        (repo / "inventory/bench.py").write_text(
            "gpu_nodes = [(\"gpu-node-1\", " + repr({
                "private_address": "127.0.0.1", "vllm_tensor_parallel_size": 1, "vllm_max_model_len": 8192,
                "vllm_replicas": replicas, "vllm_api_key_file": str(key)}) + ")]\n")
        return repo / "inventory/bench.py"

    return write


def test_cli_through_node_finds_the_slow_replica_and_keeps_the_run(inventory, tmp_path, monkeypatch):
    with StreamStandin(token_s=0.002, api_key="bench-key-5f2a9c") as fast, \
            StreamStandin(token_s=0.03, api_key="bench-key-5f2a9c") as slow:
        path = inventory([int(fast.url.rsplit(":", 1)[1]), int(slow.url.rsplit(":", 1)[1])])
        monkeypatch.chdir(path.parent.parent)
        result = CliRunner().invoke(main, ["bench", "serve", str(path), "--through", "node", "--concurrency", "1,2",
                                           "--requests", "4", "--input-len", "16", "--output-len", "8",
                                           "--results-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert "gpu-node-1-vllm-0" in result.output and "gpu-node-1-vllm-1" in result.output
    # with two targets the median is their mean: the slow one is far below it at every level
    assert "warning: gpu-node-1-vllm-1 at concurrency 1" in result.output
    assert "warning: gpu-node-1-vllm-1 at concurrency 2" in result.output
    assert "warning: gpu-node-1-vllm-0" not in result.output
    assert {r["auth"] for r in fast.requests + slow.requests} == {"Bearer bench-key-5f2a9c"}
    assert {r["model"] for r in fast.requests} == {"qwen3-32b-awq"}
    (saved,) = (tmp_path / "runs").iterdir()
    kept = json.loads(saved.read_text())
    assert [(r["target"], r["concurrency"]) for r in kept["rows"]] == [
        ("gpu-node-1-vllm-0", 1), ("gpu-node-1-vllm-0", 2), ("gpu-node-1-vllm-1", 1), ("gpu-node-1-vllm-1", 2)]
    assert "bench-key-5f2a9c" not in saved.read_text()


def test_cli_url_json_and_compare(tmp_path):
    runs = tmp_path / "runs"
    args = ["bench", "serve", "inventory/prod.py", "--concurrency", "2", "--requests", "4", "--input-len", "8",
            "--output-len", "4", "--results-dir", str(runs)]
    with StreamStandin() as s:
        first = CliRunner().invoke(main, [*args, "--url", s.url, "--json"])
        assert first.exit_code == 0, first.output
        payload = json.loads(first.output)
        assert payload["config"]["through"] == "url" and payload["rows"][0]["target"] == s.url
        second = CliRunner().invoke(main, [*args, "--url", s.url, "--compare", payload["saved"]])
    assert second.exit_code == 0, second.output
    assert "OUT TOK/S before" in second.output and "saved:" in second.output
    assert len(list(runs.iterdir())) == 2


def test_cli_with_no_target_exits_1(tmp_path):
    result = CliRunner().invoke(main, ["bench", "serve", "inventory/prod.py", "--limit", "nothing-*"])
    assert result.exit_code == 1 and "no load balancer to benchmark" in result.output
