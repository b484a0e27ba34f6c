"""Unit tests for the capacity planner (gpufleet.planner, gpufleet.model_presets, ``gpufleet plan``)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gpufleet.commands.plan import plan
from gpufleet.model_presets import PRESETS, arch_from_config, find_preset
from gpufleet.planner import (
    GIB,
    PlanError,
    check_fit,
    kv_bytes_per_token,
    parse_gpus,
    plan_replica,
    weight_bytes,
)


# ------------------------------------------------------------------------------ KV arithmetic
def test_lab_tiny_model_is_512_bytes_per_token():
    tiny = find_preset("lab-tiny-qwen3")
    assert kv_bytes_per_token(tiny, tp=1) == 2 * 2 * 2 * 32 * 2 == 512
    # vLLM's CPU engine logs "CPU KV cache size: 2,097,152 tokens" for 1 GiB of this model.
    assert GIB // kv_bytes_per_token(tiny, tp=1) == 2_097_152


def test_qwen3_32b_kv_bytes_per_token_per_gpu_at_tp2():
    m = find_preset("qwen3-32b")
    assert (m.num_hidden_layers, m.hidden_size, m.num_attention_heads, m.num_key_value_heads,
            m.head_dim, m.vocab_size, m.intermediate_size, m.tie_word_embeddings) == (
        64, 5120, 64, 8, 128, 151936, 25600, False)
    assert kv_bytes_per_token(m, tp=2) == 2 * 64 * 4 * 128 * 2 == 131072
    assert plan_replica("Qwen/Qwen3-32B-AWQ", 2, 32, 2, 32768, 0.8).kv_bytes_per_token_per_gpu == 131072


def test_kv_heads_are_replicated_when_tp_exceeds_them():
    m = find_preset("qwen3-30b-a3b")  # 4 KV heads
    assert kv_bytes_per_token(m, tp=8) == 2 * 48 * 1 * 128 * 2  # one head per GPU, not 0.5


def test_qwen3_next_counts_only_full_attention_layers():
    m = find_preset("qwen3-next-80b-a3b-instruct")
    assert m.kv_layers == 12  # every 4th of 48
    assert kv_bytes_per_token(m, tp=2) == 2 * 12 * 1 * 256 * 2
    assert plan_replica(m, 2, 32, 2, 32768, 0.8).state_bytes_per_seq_per_gpu > 0


# ------------------------------------------------------------------------------------ weights
def test_parameter_counts_match_the_published_sizes():
    expected_billions = {"qwen3-0.6b": 0.60, "qwen3-8b": 8.19, "qwen3-32b": 32.76, "qwen3-30b-a3b": 30.53,
                         "qwen3-235b-a22b": 235.09, "llama-3.3-70b-instruct": 70.55}
    for name, billions in expected_billions.items():
        params, _, _ = weight_bytes(PRESETS[name], 1, None)
        assert params / 1e9 == pytest.approx(billions, abs=0.01), name


def test_qwen3_32b_awq_weights_match_vllm_measurement():
    # vLLM 0.28, Qwen/Qwen3-32B-AWQ, TP=2: "18.00 GiB total, 9.01 GiB per GPU" (see planner docstring).
    _, total, per_gpu = weight_bytes(PRESETS["qwen3-32b-awq"], 2, "awq")
    assert total / GIB == pytest.approx(18.00, abs=0.1)
    assert per_gpu / GIB == pytest.approx(9.01, abs=0.1)


def test_kv_estimate_is_conservative_against_measured_pool():
    # Same run: 2 x 24,564 MiB, util 0.85, max_num_batched_tokens 2048 -> 87,200 KV tokens.
    r = plan_replica("qwen3-32b-awq", 2, 24564 / 1024, 2, 8192, 0.85)
    assert 0.88 * 87_200 <= r.kv_tokens_per_gpu <= 87_200


# ------------------------------------------------------------------------------------ verdicts
def test_qwen3_32b_awq_fits_2x32_at_32768():
    r = plan_replica("qwen3-32b-awq", 2, 32, 2, 32768, 0.80)
    assert r.fits, r.reasons
    assert r.reasons == []
    assert r.full_length_seqs == r.kv_tokens_per_gpu // 32768 >= 1
    assert r.largest_context_tokens >= 32768


@pytest.mark.parametrize("quant", [None, "awq", "awq_marlin", "gptq"])
def test_qwen3_235b_refused_on_2x32(quant):
    r = plan_replica("qwen3-235b-a22b", 2, 32, 2, 32768, 0.80, quant)
    assert not r.fits
    assert any("weights need" in reason for reason in r.reasons)
    assert r.weight_bytes_per_gpu > r.budget_bytes_per_gpu


def test_largest_context_monotonic_in_utilisation():
    contexts = [plan_replica("qwen3-32b-awq", 2, 32, 2, 32768, u).largest_context_tokens
                for u in (0.40, 0.50, 0.60, 0.70, 0.80, 0.90, 0.95)]
    assert contexts == sorted(contexts)
    assert contexts[0] < contexts[-1]


def test_too_long_context_reports_needed_utilisation():
    r = plan_replica("qwen3-32b-awq", 2, 32, 2, 40960, 0.45)
    assert not r.fits
    assert any("does not fit" in reason for reason in r.reasons)
    assert r.min_utilization_for_max_model_len is not None
    assert plan_replica("qwen3-32b-awq", 2, 32, 2, 40960, r.min_utilization_for_max_model_len + 0.01).fits


def test_tp_must_divide_heads():
    r = plan_replica("qwen3-32b", 4, 80, 3, 4096, 0.9)
    assert any("num_attention_heads" in reason for reason in r.reasons)
    assert any("num_key_value_heads" in reason for reason in r.reasons)


def test_max_model_len_beyond_model_limit_refused():
    r = plan_replica("qwen3-0.6b", 2, 32, 2, 65536, 0.8)
    assert any("max_position_embeddings" in reason for reason in r.reasons)


def test_bad_input_raises():
    with pytest.raises(PlanError, match="known"):
        plan_replica("no-such-model", 2, 32, 2, 4096, 0.8)
    with pytest.raises(PlanError):
        plan_replica("qwen3-32b-awq", 2, 32, 2, 4096, 1.5)
    with pytest.raises(PlanError):
        parse_gpus("two by 32")
    assert parse_gpus("2x32") == (2, 32.0)
    assert parse_gpus("2x32607MiB")[1] == pytest.approx(31.84, abs=0.01)


# --------------------------------------------------------------------------------- check_fit
def test_check_fit_for_settings_validation():
    assert check_fit("Qwen/Qwen3-32B-AWQ", 2, 32.0, 2, 32768, 0.80, "awq_marlin") == []
    assert check_fit("unknown/model", 2, 32.0, 2, 32768, 0.80, None) == []  # caller warns
    reasons = check_fit("Qwen/Qwen3-235B-A22B", 2, 32.0, 2, 32768, 0.80, "awq_marlin")
    assert reasons and "weights need" in reasons[0]
    assert check_fit("qwen3-32b-awq", 1, 32.0, 2, 32768, 0.80, None)  # TP=2 on one GPU


# ------------------------------------------------------------------------------- config.json
def test_arch_from_config_reads_hf_config(tmp_path):
    cfg = {"model_type": "qwen3", "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
           "tie_word_embeddings": True, "max_position_embeddings": 4096}
    assert kv_bytes_per_token(arch_from_config(cfg), 1) == 512
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    result = CliRunner().invoke(plan, ["--config", str(path), "--gpus", "1x4", "--max-model-len", "2048",
                                       "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["kv_bytes_per_token_per_gpu"] == 512


def test_every_preset_names_its_source():
    for p in PRESETS.values():
        assert p.source_url and p.source_note, p.name
        if p.name != "lab-tiny-qwen3":
            assert p.source_url.startswith("https://huggingface.co/") and p.source_url.endswith("config.json")


# ------------------------------------------------------------------------------------------ CLI
def test_cli_fit_exits_0():
    result = CliRunner().invoke(plan, ["--model", "qwen3-32b-awq", "--gpus", "2x32", "--max-model-len", "32768"])
    assert result.exit_code == 0, result.output
    assert "FITS" in result.output and "131,072" in result.output


def test_cli_does_not_fit_exits_2_with_numbers():
    result = CliRunner().invoke(plan, ["--model", "qwen3-235b-a22b", "--quantization", "awq", "--gpus", "2x32",
                                       "--max-model-len", "32768"])
    assert result.exit_code == 2, result.output
    assert "DOES NOT FIT" in result.output and "weights per GPU" in result.output


def test_cli_bad_input_exits_1():
    runner = CliRunner()
    unknown = runner.invoke(plan, ["--model", "no-such-model", "--gpus", "2x32"])
    assert unknown.exit_code == 1
    assert "qwen3-32b-awq" in unknown.output  # names the known models
    assert runner.invoke(plan, ["--model", "qwen3-32b-awq", "--gpus", "lots"]).exit_code == 1
    assert runner.invoke(plan, ["--model", "qwen3-32b-awq", "--tp", "two"]).exit_code == 1  # click usage error
    assert runner.invoke(plan, ["--gpus", "2x32"]).exit_code == 1  # neither --model nor --config


def test_cli_json_and_list_models():
    runner = CliRunner()
    result = runner.invoke(plan, ["--model", "Qwen/Qwen3-32B-AWQ", "--gpus", "2x32", "--json"])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["fits"] is True and data["tp"] == 2 and data["kv_bytes_per_token_per_gpu"] == 131072
    listing = runner.invoke(plan, ["--list-models"])
    assert listing.exit_code == 0 and "Qwen/Qwen3-32B-AWQ" in listing.output


def test_kv_cache_follows_the_engine_dtype():
    """The lab runs --dtype float32 (CPU-independent): its KV cache is 4 bytes per element, 1024 per token."""
    from gpufleet.planner import dtype_from_args, plan_replica

    assert dtype_from_args(["--dtype", "float32", "--enforce-eager"]) == "float32"
    assert dtype_from_args(["--dtype=bfloat16"]) == "bfloat16" and dtype_from_args([]) == "auto"
    # 2 (K,V) x 2 layers x 2 KV heads x 32 head dim x 4 bytes = 1024 bytes per token at TP=1.
    assert plan_replica("lab-tiny-qwen3", 2, 32, 1, 512, 0.8, dtype="float32").kv_bytes_per_token_per_gpu == 1024
    assert plan_replica("lab-tiny-qwen3", 2, 32, 1, 512, 0.8).kv_bytes_per_token_per_gpu == 512
    # An fp8 KV cache is 1 byte whatever the model computes in.
    assert plan_replica("lab-tiny-qwen3", 2, 32, 1, 512, 0.8, dtype="float32",
                        kv_cache_dtype="fp8").kv_bytes_per_token_per_gpu == 256
    with pytest.raises(PlanError, match="dtype must be one of"):
        plan_replica("lab-tiny-qwen3", 2, 32, 1, 512, 0.8, dtype="int3")
