"""``gpufleet plan --model NAME --gpus 2x32 --max-model-len 32768``: will a vLLM replica fit?

Exit codes: 0 fits, 2 does not fit (the numbers and the reasons are still printed), 1 bad input.
The formulas and their assumptions are in :mod:`gpufleet.planner`.
"""

from __future__ import annotations

import json
import sys

import click

from gpufleet.model_presets import ModelArch, PRESETS, load_config_file
from gpufleet.planner import (
    DEFAULT_MAX_NUM_BATCHED_TOKENS,
    DEFAULT_MAX_NUM_SEQS,
    DEFAULT_RUNTIME_RESERVE_GIB,
    DTYPE_BYTES,
    GIB,
    PlanError,
    PlanResult,
    parse_gpus,
    plan_replica,
)
from gpufleet.settings_vllm import VllmSettings
from gpufleet.table import render_table

EXIT_FITS, EXIT_BAD_INPUT, EXIT_DOES_NOT_FIT = 0, 1, 2
# The fleet's own defaults (settings_vllm.py), so that a plain `gpufleet plan` plans what a deploy serves.
_SETTINGS = VllmSettings.model_fields


class _BadInputIsOne(click.Command):
    """click exits 2 on usage errors; here 2 means 'does not fit', so bad input exits 1."""

    def make_context(self, info_name, args, parent=None, **extra):  # type: ignore[override]
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            exc.exit_code = EXIT_BAD_INPUT
            raise


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def render(r: PlanResult) -> str:
    rows = [
        ("model", f"{r.model} ({r.hf_id})"),
        ("quantization", f"{r.quantization}; KV cache {r.kv_cache_dtype}"),
        ("GPUs", f"{r.gpus} x {r.gpu_memory_gib:.2f} GiB; TP={r.tp}, {r.replicas_per_host} replica(s) per host"),
        ("parameters", f"{r.total_params / 1e9:.2f} B"),
        ("weights total", _gib(r.weight_bytes_total)),
        ("weights per GPU", _gib(r.weight_bytes_per_gpu)),
        ("budget per GPU", f"{_gib(r.budget_bytes_per_gpu)} ({r.gpu_memory_utilization:.2f} x "
                           f"{r.gpu_memory_gib:.2f} GiB)"),
        ("activation reserve", f"{_gib(r.activation_reserve_bytes)} (max_num_batched_tokens "
                               f"{r.max_num_batched_tokens}, max_num_seqs {r.max_num_seqs})"),
        ("runtime reserve", _gib(r.runtime_reserve_bytes)),
        ("KV cache per GPU", _gib(max(0, r.kv_pool_bytes_per_gpu))),
        ("KV bytes/token/GPU", f"{r.kv_bytes_per_token_per_gpu:,} ({r.kv_layers} KV layers x "
                               f"{r.kv_heads_per_gpu} KV heads/GPU)"),
    ]
    if r.state_bytes_per_seq_per_gpu:
        rows.append(("state/sequence/GPU", f"{r.state_bytes_per_seq_per_gpu / 2**20:.2f} MiB (linear attention)"))
    rows += [
        ("KV tokens (replica)", f"{r.kv_tokens_per_gpu:,}"),
        ("max_model_len", f"{r.max_model_len:,} (model max {r.model_max_context:,})"),
        ("full-length seqs", f"{r.full_length_seqs}"),
        ("largest context", f"{r.largest_context_tokens:,} tokens (memory alone: "
                            f"{r.largest_context_by_memory:,})"),
    ]
    if r.min_utilization_for_max_model_len is not None:
        rows.append(("min utilisation", f"{r.min_utilization_for_max_model_len:.2f} for one max_model_len sequence"))
    lines = [render_table(["quantity", "value"], rows), ""]
    lines.append("FITS" if r.fits else "DOES NOT FIT")
    lines += [f"  - {reason}" for reason in r.reasons]
    lines += [f"  note: {n}" for n in r.notes]
    return "\n".join(lines)


def _list_models() -> str:
    rows = [(p.name, p.hf_id, p.quantization or "bf16", p.source_url) for p in PRESETS.values()]
    return render_table(["name", "hugging face id", "weights", "source"], rows)


@click.command(cls=_BadInputIsOne)
@click.option("--model", "model", metavar="NAME|HF_ID", help="Preset name or Hugging Face id (see --list-models).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="A model's config.json instead of a preset.")
@click.option("--gpus", "gpus_spec", default="2x32", show_default=True, metavar="NxGIB",
              help="GPU count and memory each: 2x32 (GiB) or 2x32607MiB (an RTX 5090 reports 32607 MiB "
                   "= 31.84 GiB).")
@click.option("--max-model-len", type=int, default=_SETTINGS["vllm_max_model_len"].default, show_default=True)
@click.option("--gpu-memory-utilization", type=float, default=_SETTINGS["vllm_gpu_memory_utilization"].default,
              show_default=True)
@click.option("--tp", type=int, default=None, help="Tensor parallel size [default: the GPU count].")
@click.option("--quantization", default=None,
              help="Override the model's weights: awq, gptq, fp8 or bf16 [default: the model's own].")
@click.option("--kv-cache-dtype", type=click.Choice(["auto", "fp8"]), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(list(DTYPE_BYTES)), default="auto", show_default=True,
              help="vLLM's --dtype; an auto KV cache is kept in it (float32: 4 bytes per element).")
@click.option("--max-num-batched-tokens", type=int, default=DEFAULT_MAX_NUM_BATCHED_TOKENS, show_default=True)
@click.option("--max-num-seqs", type=int, default=DEFAULT_MAX_NUM_SEQS, show_default=True)
@click.option("--activation-reserve-gib", type=float, default=None,
              help="Peak activation per GPU [default: estimated from the config].")
@click.option("--runtime-reserve-gib", type=float, default=DEFAULT_RUNTIME_RESERVE_GIB, show_default=True,
              help="CUDA context + NCCL + CUDA graphs per GPU.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--list-models", is_flag=True, help="List the presets and exit.")
def plan(model: str | None, config_path: str | None, gpus_spec: str, max_model_len: int,
         gpu_memory_utilization: float, tp: int | None, quantization: str | None, kv_cache_dtype: str, dtype: str,
         max_num_batched_tokens: int, max_num_seqs: int, activation_reserve_gib: float | None,
         runtime_reserve_gib: float, as_json: bool, list_models: bool) -> None:
    """Check that a model fits a vLLM replica and print its KV-cache capacity.

    Exit 0 fits, 2 does not fit, 1 bad input.
    """
    if list_models:
        if as_json:
            click.echo(json.dumps([{"name": p.name, "hf_id": p.hf_id, "quantization": p.quantization,
                                    "source_url": p.source_url, "source_note": p.source_note}
                                   for p in PRESETS.values()], indent=2))
        else:
            click.echo(_list_models())
        sys.exit(EXIT_FITS)
    try:
        if bool(model) == bool(config_path):
            raise PlanError("give exactly one of --model or --config")
        arch: ModelArch | str
        arch = load_config_file(config_path) if config_path else model  # type: ignore[assignment]
        count, mem = parse_gpus(gpus_spec)
        result = plan_replica(arch, count, mem, tp if tp is not None else count, max_model_len,
                              gpu_memory_utilization, quantization,
                              max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs,
                              activation_reserve_gib=activation_reserve_gib,
                              runtime_reserve_gib=runtime_reserve_gib, kv_cache_dtype=kv_cache_dtype, dtype=dtype)
    except (PlanError, ValueError) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
    else:
        click.echo(render(result))
    sys.exit(EXIT_FITS if result.fits else EXIT_DOES_NOT_FIT)
