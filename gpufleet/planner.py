"""Capacity planner: will a model fit a vLLM replica, and how much KV cache is left?

This is arithmetic on a model's config.json (see :mod:`gpufleet.model_presets`). It does not
replace vLLM's own memory profiler. It tells you before a deploy whether a model, quantisation,
tensor-parallel size, ``--max-model-len`` and ``--gpu-memory-utilization`` can work on a host, and
how many full-length sequences the KV cache will hold. Every size is in bytes per GPU unless the
name says otherwise; GiB = 2**30 bytes.

Formulas
========

**Weights.** Every tensor of the checkpoint is counted from the config:

* attention (full layers): q ``hidden x heads*head_dim`` (x2 for Qwen3-Next's gated attention),
  k and v ``hidden x kv_heads*head_dim``, o ``heads*head_dim x hidden``, plus Qwen3's per-head
  q_norm/k_norm (``head_dim`` each);
* Qwen3-Next linear attention (Gated DeltaNet) layers: in_proj_qkvz
  ``hidden x (2*key_dim + 2*value_dim)``, in_proj_ba ``hidden x 2*v_heads``, conv1d
  ``(2*key_dim + value_dim) x kernel``, dt_bias/A_log ``v_heads``, gated norm ``v_head_dim``,
  out_proj ``value_dim x hidden``. Here key_dim = linear_num_key_heads * linear_key_head_dim and
  value_dim = linear_num_value_heads * linear_value_head_dim;
* MLP: dense SwiGLU ``3 x hidden x intermediate_size``; MoE layers
  ``num_experts x 3 x hidden x moe_intermediate_size``, plus a shared expert
  ``3 x hidden x shared_expert_intermediate_size`` and its 1-wide gate where present, plus the router
  ``hidden x num_experts``;
* two RMSNorms per layer (``hidden`` each), the final norm, the embedding ``vocab x hidden`` and the
  lm_head (the same size; counted once when ``tie_word_embeddings``).

Bytes per weight: bf16/fp16 = 2; fp8 = 1 (+ a 128x128-block fp32 scale, 4/16384 bytes per weight);
AWQ/GPTQ int4 = 0.5 + (2-byte fp16 scale + 0.5-byte packed 4-bit zero point) / group_size
(group_size 128 gives 0.5195). Only the linear projections inside decoder layers are quantised.
The embedding, lm_head, norms, conv1d, MoE router and shared-expert gate stay 16-bit, as AWQ and
GPTQ checkpoints keep them. GPTQ's per-row ``g_idx`` (4 bytes per input row) is ignored (<0.1 %).

**Weights per GPU under tensor parallel size TP.** The sharded parts are divided by TP: column- and
row-parallel projections, every expert (vLLM's fused MoE without expert parallelism splits each
expert's intermediate dimension), the vocab-parallel embedding and lm_head, and the linear-attention
conv and gates. Norms, the router and the shared-expert gate are replicated on every GPU. k and v
hold ``max(1, kv_heads / TP)`` heads per GPU, because vLLM replicates KV heads when TP exceeds
their number. Vocabulary padding (to a multiple of 64) is ignored.

**KV cache per token per GPU**::

    kv_bytes_per_token = 2 (K and V) x layers_with_kv x max(1, kv_heads / TP) x head_dim x kv_dtype_bytes

``layers_with_kv`` is every layer, except in Qwen3-Next: its linear-attention layers keep a
fixed-size recurrent state per sequence instead of per-token KV, so only each
``full_attention_interval``-th layer counts. kv_dtype_bytes follows the model's compute dtype
for ``--kv-cache-dtype auto``: 2 on a 16-bit model, 4 with ``--dtype float32`` (the lab's CPU
engine), and 1 for fp8. For Qwen3-Next the per-sequence state is also charged, per GPU:
``linear_layers x ((2*key_dim + value_dim)/TP x (kernel-1) + v_heads/TP x k_dim x v_dim) x 2 bytes``
(conv state + SSM state at the model dtype, vLLM's ``mamba_ssm_cache_dtype=auto``).

**The budget.** vLLM caps itself at ``gpu_memory_utilization x total`` per GPU; what is left of
that after weights and the profiled peak activation becomes KV cache. The planner subtracts::

    kv_pool = util x gpu_memory - weights_per_gpu - activation_reserve - runtime_reserve

* activation reserve: an estimate of the peak that vLLM's profiling forward pass measures. That
  pass pushes ``max_num_batched_tokens`` tokens (default 2048, vLLM V1's OpenAI-server default on
  GPUs under 70 GiB) through the model and samples ``max_num_seqs`` (default 256) dummy requests::

      T x 2 bytes x (4 x hidden + attention_width + mlp_width) + max_num_seqs x vocab x 4 bytes x 2

  attention_width is the per-GPU q/k/v/o (or linear-attention projection) output width. mlp_width is
  ``3 x intermediate/TP`` for dense models and
  ``top_k x (3 x moe_intermediate/TP + hidden) + 3 x shared/TP + 2 x num_experts`` for MoE (fused-MoE
  intermediate caches and fp32 router logits). The last term is fp32 logits and one sampler copy.
  Pass ``activation_reserve_gib`` to use a figure measured in vLLM's log instead;
* runtime reserve (default 1.0 GiB): the CUDA context, NCCL buffers, cuBLAS workspaces and
  CUDA-graph pools. Some vLLM versions allocate part of this outside the utilisation budget. The
  planner still charges all of it inside, so its KV figure is a lower bound.

The KV pool is rounded down to whole 16-token blocks. Then::

    kv_tokens_per_gpu   = pool // (16 x kv_bytes_per_token) x 16   (a replica's token capacity)
    full_length_seqs    = kv_tokens_per_gpu // max_model_len        (hybrid: pool // (len x bpt + state))
    largest_context     = min(kv_tokens_per_gpu, max_position_embeddings)
                          (hybrid: the KV tokens left after one sequence's state)

A replica fits when: TP GPUs exist, TP divides num_attention_heads, TP divides the KV heads (or
the KV heads divide TP, in which case they are replicated), AWQ/GPTQ group size divides every
row-parallel layer's per-GPU input width, the weights fit the budget, ``max_model_len`` is at most
the model's ``max_position_embeddings``, and at least one ``max_model_len`` sequence fits in the KV
cache. vLLM refuses to start if any of these fails.

Cross-check against a real run
==============================

A public vLLM 0.28 report (2 x RTX 4090, 24,564 MiB each, ``Qwen/Qwen3-32B-AWQ``, TP=2,
``--max-num-batched-tokens 2048``) logged 18.00 GiB of weights (9.01 GiB per GPU). At
``--gpu-memory-utilization 0.85`` it logged 87,200 KV tokens, and 39,040 at 0.60. The planner
estimates 18.03 / 9.00 GiB. With the default 1.0 GiB runtime reserve it estimates about 80,000
tokens at 0.85 (8 % below the measured figure, on the safe side). ``tests/unit/test_planner.py``
keeps this check.

Sources: each model's Hugging Face config.json (URLs in :mod:`gpufleet.model_presets`). vLLM
documentation and source: ``gpu_memory_utilization`` sizes the pool "after profiling",
``max_num_batched_tokens`` sizes the profiling pass, KV heads are replicated when TP exceeds them,
and the AWQ "input size is not aligned with the quantized weight shape" check. The AWQ
checkpoint format: 4-bit weights packed in int32, fp16 scales and packed zero points per
128-element group.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from gpufleet.model_presets import ModelArch, find_preset, known_names

GIB = 1024**3
BLOCK_SIZE = 16  # vLLM's default KV block size for CUDA attention backends
DEFAULT_MAX_NUM_BATCHED_TOKENS = 2048
DEFAULT_MAX_NUM_SEQS = 256
DEFAULT_RUNTIME_RESERVE_GIB = 1.0
ACT_BYTES = 2  # bf16/fp16 activations

# Names the fleet's settings (vllm_quantization) and vLLM's --quantization use, mapped to ours.
_QUANT_ALIASES = {
    "awq": "awq", "awq_marlin": "awq", "gptq": "gptq", "gptq_marlin": "gptq", "fp8": "fp8",
    "none": "none", "bf16": "none", "bfloat16": "none", "fp16": "none", "float16": "none", "16bit": "none",
}


class PlanError(ValueError):
    """Bad input: an unknown model, a malformed GPU spec, an out-of-range value."""


def normalise_quantization(q: str | None) -> str | None:
    """``awq_marlin`` -> ``awq`` etc.; None / unknown (e.g. compressed-tensors) -> None (use the model's)."""
    if q is None:
        return None
    return _QUANT_ALIASES.get(q.strip().lower())


def bytes_per_weight(quant: str | None, group_size: int = 128) -> float:
    """Bytes per quantisable weight: 16-bit 2, fp8 1 (+ block scales), int4 0.5 (+ group scale/zero)."""
    if quant in ("awq", "gptq"):
        return 0.5 + (2 + 0.5) / group_size
    if quant == "fp8":
        return 1 + 4 / (128 * 128)
    return 2.0


# ------------------------------------------------------------------------------------ weights
@dataclass
class _Tensor:
    params_total: int
    params_per_gpu: float
    quantised: bool


def _tensors(m: ModelArch, tp: int) -> list[_Tensor]:
    """Every weight tensor group of the checkpoint, with its per-GPU share under TP."""
    out: list[_Tensor] = []

    def sharded(n: int, q: bool) -> None:
        out.append(_Tensor(n, n / tp, q))

    def replicated(n: int) -> None:
        out.append(_Tensor(n, n, False))

    h, hd = m.hidden_size, m.head_dim
    kv_per_gpu = max(1, m.num_key_value_heads // tp) if m.num_key_value_heads >= tp else 1
    q_out = m.num_attention_heads * hd * (2 if m.attn_output_gate else 1)
    key_dim = m.linear_num_key_heads * m.linear_key_head_dim
    value_dim = m.linear_num_value_heads * m.linear_value_head_dim
    for i in range(m.num_hidden_layers):
        if m.is_full_attention_layer(i):
            sharded(h * q_out, True)  # q_proj
            kv = h * m.num_key_value_heads * hd
            out.append(_Tensor(2 * kv, 2 * h * kv_per_gpu * hd, True))  # k_proj + v_proj
            sharded(m.num_attention_heads * hd * h, True)  # o_proj
            if m.qk_norm:
                replicated(2 * hd)
        else:  # Gated DeltaNet linear attention
            sharded(h * (2 * key_dim + 2 * value_dim), True)  # in_proj_qkvz
            sharded(h * 2 * m.linear_num_value_heads, False)  # in_proj_ba (small, kept 16-bit)
            sharded((2 * key_dim + value_dim) * m.linear_conv_kernel_dim, False)  # conv1d
            sharded(2 * m.linear_num_value_heads, False)  # dt_bias, A_log
            replicated(m.linear_value_head_dim)  # gated RMSNorm
            sharded(value_dim * h, True)  # out_proj
        if m.is_moe_layer(i):
            sharded(m.num_experts * 3 * h * m.moe_intermediate_size, True)
            replicated(h * m.num_experts)  # router
            if m.shared_expert_intermediate_size:
                sharded(3 * h * m.shared_expert_intermediate_size, True)
                replicated(h)  # shared_expert_gate
        else:
            sharded(3 * h * m.intermediate_size, True)
        replicated(2 * h)  # input_layernorm, post_attention_layernorm
    replicated(h)  # final norm
    emb = m.vocab_size * h
    sharded(emb if m.tie_word_embeddings else 2 * emb, False)  # vocab-parallel embed + lm_head
    return out


def weight_bytes(m: ModelArch, tp: int, quant: str | None) -> tuple[int, int, int]:
    """(total parameters, total weight bytes, weight bytes per GPU)."""
    bpw = bytes_per_weight(quant, m.quant_group_size)
    params = total = per_gpu = 0.0
    for t in _tensors(m, tp):
        b = bpw if (t.quantised and quant) else 2.0
        params += t.params_total
        total += t.params_total * b
        per_gpu += t.params_per_gpu * b
    return int(params), int(total), int(per_gpu)


# ------------------------------------------------------------------------------ KV and state
def kv_heads_per_gpu(m: ModelArch, tp: int) -> int:
    return max(1, m.num_key_value_heads // tp)


def kv_bytes_per_token(m: ModelArch, tp: int, kv_dtype_bytes: int = 2) -> int:
    """2 (K,V) x layers_with_kv x kv_heads_per_gpu x head_dim x dtype bytes, per GPU."""
    return 2 * m.kv_layers * kv_heads_per_gpu(m, tp) * m.head_dim * kv_dtype_bytes


def state_bytes_per_sequence(m: ModelArch, tp: int) -> int:
    """Qwen3-Next: fixed recurrent (conv + SSM) state per sequence per GPU; 0 for pure attention."""
    if not m.is_hybrid:
        return 0
    linear_layers = m.num_hidden_layers - m.kv_layers
    key_dim = m.linear_num_key_heads * m.linear_key_head_dim
    value_dim = m.linear_num_value_heads * m.linear_value_head_dim
    conv = (2 * key_dim + value_dim) // tp * max(0, m.linear_conv_kernel_dim - 1)
    ssm = m.linear_num_value_heads // tp * m.linear_key_head_dim * m.linear_value_head_dim
    return linear_layers * (conv + ssm) * 2


def activation_bytes(m: ModelArch, tp: int, max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
                     max_num_seqs: int = DEFAULT_MAX_NUM_SEQS) -> int:
    """Estimated peak of vLLM's profiling forward pass (see the module docstring)."""
    h, hd = m.hidden_size, m.head_dim
    heads = max(1, m.num_attention_heads // tp)
    attn = (heads * (2 if m.attn_output_gate else 1) + 2 * kv_heads_per_gpu(m, tp)) * hd + heads * hd
    if m.is_hybrid:
        key_dim = m.linear_num_key_heads * m.linear_key_head_dim
        value_dim = m.linear_num_value_heads * m.linear_value_head_dim
        lin = (2 * key_dim + 2 * value_dim + 2 * m.linear_num_value_heads + value_dim) // tp
        attn = max(attn, lin)
    if m.is_moe:
        mlp = (m.num_experts_per_tok * (3 * m.moe_intermediate_size // tp + h)
               + 3 * m.shared_expert_intermediate_size // tp + 2 * m.num_experts)
        if any(not m.is_moe_layer(i) for i in range(m.num_hidden_layers)):
            mlp = max(mlp, 3 * m.intermediate_size // tp)
    else:
        mlp = 3 * m.intermediate_size // tp
    per_token = ACT_BYTES * (4 * h + attn + mlp)
    logits = max_num_seqs * m.vocab_size * 4 * 2
    return max_num_batched_tokens * per_token + logits


# vLLM's --dtype values and their bytes per element; "auto" is the checkpoint's 16-bit dtype.
DTYPE_BYTES = {"auto": 2, "bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4}


def dtype_from_args(args: list[str]) -> str:
    """The ``--dtype`` a vLLM command line sets (``--dtype X`` or ``--dtype=X``), else ``auto``."""
    for i, arg in enumerate(args):
        if arg == "--dtype" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--dtype="):
            return arg.split("=", 1)[1]
    return "auto"


# ------------------------------------------------------------------------------------- result
@dataclass
class PlanResult:
    model: str
    hf_id: str
    source_url: str
    quantization: str  # "bf16" when unquantised
    gpus: int
    gpu_memory_gib: float
    tp: int
    replicas_per_host: int
    max_model_len: int
    gpu_memory_utilization: float
    max_num_batched_tokens: int
    max_num_seqs: int
    kv_cache_dtype: str
    total_params: int
    weight_bytes_total: int
    weight_bytes_per_gpu: int
    budget_bytes_per_gpu: int
    activation_reserve_bytes: int
    runtime_reserve_bytes: int
    kv_pool_bytes_per_gpu: int  # negative when weights + reserves exceed the budget
    kv_layers: int
    kv_heads_per_gpu: int
    kv_bytes_per_token_per_gpu: int
    kv_bytes_per_token_replica: int  # summed over the TP GPUs (includes replicated heads)
    state_bytes_per_seq_per_gpu: int
    kv_tokens_per_gpu: int  # token capacity of the replica (every GPU holds its share of each token)
    full_length_seqs: int
    largest_context_tokens: int  # min(memory limit, max_position_embeddings)
    largest_context_by_memory: int
    model_max_context: int
    min_utilization_for_max_model_len: float | None  # utilisation at which one full sequence fits
    fits: bool
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("weight_bytes_total", "weight_bytes_per_gpu", "budget_bytes_per_gpu",
                  "activation_reserve_bytes", "runtime_reserve_bytes", "kv_pool_bytes_per_gpu"):
            d[k.replace("_bytes", "_gib")] = round(d[k] / GIB, 3)
        return d


def resolve_model(model: ModelArch | str) -> ModelArch:
    if isinstance(model, ModelArch):
        return model
    preset = find_preset(model)
    if preset is None:
        raise PlanError(f"unknown model {model!r}; known: {', '.join(known_names())} "
                        "(or pass --config path/to/config.json)")
    return preset


def _tp_reasons(m: ModelArch, tp: int, quant: str | None) -> list[str]:
    r = []
    if m.num_attention_heads % tp:
        r.append(f"TP={tp} does not divide num_attention_heads={m.num_attention_heads} (vLLM requires it)")
    kv = m.num_key_value_heads
    if kv >= tp and kv % tp:
        r.append(f"TP={tp} does not divide num_key_value_heads={kv} (vLLM requires it)")
    if kv < tp and tp % kv:
        r.append(f"num_key_value_heads={kv} does not divide TP={tp}, so vLLM cannot replicate KV heads evenly")
    if quant in ("awq", "gptq"):
        g = m.quant_group_size
        widths = {"o_proj": m.num_attention_heads * m.head_dim}
        if m.is_moe:
            widths["experts.down_proj"] = m.moe_intermediate_size
            if m.shared_expert_intermediate_size:
                widths["shared_expert.down_proj"] = m.shared_expert_intermediate_size
        if not m.is_moe or any(not m.is_moe_layer(i) for i in range(m.num_hidden_layers)):
            widths["down_proj"] = m.intermediate_size
        if m.is_hybrid:
            widths["linear_attn.out_proj"] = m.linear_num_value_heads * m.linear_value_head_dim
        for name, width in widths.items():
            if width % tp or (width // tp) % g:
                r.append(f"{quant.upper()} group size {g} does not divide {name}'s per-GPU input width "
                         f"{width}/{tp} (vLLM: input size not aligned with the quantized weight shape)")
    return r


def plan_replica(model: ModelArch | str, gpus: int, gpu_memory_gib: float, tp: int, max_model_len: int,
                 gpu_memory_utilization: float, quantization: str | None = None, *,
                 max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
                 max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
                 activation_reserve_gib: float | None = None,
                 runtime_reserve_gib: float = DEFAULT_RUNTIME_RESERVE_GIB,
                 kv_cache_dtype: str = "auto", dtype: str = "auto") -> PlanResult:
    """Plan one vLLM replica of ``tp`` GPUs on a host of ``gpus`` GPUs of ``gpu_memory_gib`` each.

    ``quantization``: None keeps the model's own (its preset / config.json); ``awq``, ``awq_marlin``,
    ``gptq``, ``gptq_marlin``, ``fp8`` override it; ``none``/``bf16`` forces 16-bit weights.
    ``dtype`` is vLLM's ``--dtype`` (see :func:`dtype_from_args`); with ``kv_cache_dtype="auto"``
    the KV cache is kept in it. Raises :class:`PlanError` on bad input.
    """
    m = resolve_model(model)
    if dtype not in DTYPE_BYTES:
        raise PlanError(f"dtype must be one of {', '.join(DTYPE_BYTES)} (got {dtype!r})")
    if gpus < 1 or tp < 1:
        raise PlanError(f"gpus and tp must be >= 1 (got gpus={gpus}, tp={tp})")
    if not gpu_memory_gib > 0:
        raise PlanError(f"gpu memory must be > 0 GiB (got {gpu_memory_gib})")
    if not 0 < gpu_memory_utilization <= 1:
        raise PlanError(f"gpu_memory_utilization must be in (0, 1] (got {gpu_memory_utilization})")
    if max_model_len < 1 or max_num_batched_tokens < 1 or max_num_seqs < 1:
        raise PlanError("max_model_len, max_num_batched_tokens and max_num_seqs must be >= 1")
    if runtime_reserve_gib < 0 or (activation_reserve_gib is not None and activation_reserve_gib < 0):
        raise PlanError("reserves must be >= 0 GiB")
    if kv_cache_dtype not in ("auto", "fp8", "fp8_e4m3", "fp8_e5m2"):
        raise PlanError(f"kv_cache_dtype must be auto or fp8* (got {kv_cache_dtype!r})")
    if quantization is not None and quantization.strip().lower() not in _QUANT_ALIASES \
            and quantization.strip().lower() != "compressed-tensors":
        raise PlanError(f"unknown quantization {quantization!r}; use awq, gptq, fp8 or bf16")
    q = normalise_quantization(quantization)
    quant = m.quantization if q is None else (None if q == "none" else q)

    reasons: list[str] = []
    notes: list[str] = []
    if tp > gpus:
        reasons.append(f"TP={tp} needs {tp} GPUs; the host has {gpus}")
    elif gpus % tp:
        notes.append(f"{gpus % tp} of {gpus} GPUs left idle by TP={tp}")
    reasons += _tp_reasons(m, tp, quant)
    if m.num_key_value_heads < tp:
        notes.append(f"KV heads ({m.num_key_value_heads}) < TP ({tp}): vLLM replicates them, 1 per GPU")

    params, w_total, w_gpu = weight_bytes(m, tp, quant)
    budget = int(gpu_memory_utilization * gpu_memory_gib * GIB)
    act = (int(activation_reserve_gib * GIB) if activation_reserve_gib is not None
           else activation_bytes(m, tp, max_num_batched_tokens, max_num_seqs))
    runtime = int(runtime_reserve_gib * GIB)
    pool = budget - w_gpu - act - runtime
    kv_dtype_bytes = DTYPE_BYTES[dtype] if kv_cache_dtype == "auto" else 1
    bpt = kv_bytes_per_token(m, tp, kv_dtype_bytes)
    state = state_bytes_per_sequence(m, tp)
    block = BLOCK_SIZE * bpt

    if pool > 0 and bpt > 0:
        kv_tokens = pool // block * BLOCK_SIZE
        largest = max(0, (pool - state) // block * BLOCK_SIZE)
        per_seq = -(-max_model_len // BLOCK_SIZE) * block + state
        seqs = pool // per_seq
    else:
        kv_tokens = largest = seqs = 0
    need = w_gpu + act + runtime + -(-max_model_len // BLOCK_SIZE) * block + state
    min_util = need / (gpu_memory_gib * GIB)

    if w_gpu > budget:
        reasons.append(f"weights need {w_gpu / GIB:.2f} GiB per GPU but the budget is "
                       f"{budget / GIB:.2f} GiB ({gpu_memory_utilization:.2f} x {gpu_memory_gib:g} GiB)")
    elif pool <= 0:
        reasons.append(f"no room for KV cache: weights {w_gpu / GIB:.2f} + activations {act / GIB:.2f} + "
                       f"runtime {runtime / GIB:.2f} GiB exceed the {budget / GIB:.2f} GiB budget per GPU")
    elif largest < max_model_len:
        hint = (f"; needs gpu_memory_utilization >= {min_util:.2f}" if min_util <= 1
                else "; does not fit at any utilisation")
        reasons.append(f"max_model_len {max_model_len} does not fit: the KV cache holds {largest} tokens "
                       f"per sequence{hint}")
    if m.max_position_embeddings and max_model_len > m.max_position_embeddings:
        reasons.append(f"max_model_len {max_model_len} exceeds the model's max_position_embeddings "
                       f"{m.max_position_embeddings} (vLLM refuses without rope scaling)")
    if gpu_memory_utilization > 0.95:
        notes.append("utilisation above 0.95 leaves little room for CUDA-graph capture outside the budget")

    return PlanResult(
        model=m.name, hf_id=m.hf_id, source_url=m.source_url, quantization=quant or "bf16",
        gpus=gpus, gpu_memory_gib=gpu_memory_gib, tp=tp, replicas_per_host=gpus // tp if tp <= gpus else 0,
        max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
        max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs,
        kv_cache_dtype=kv_cache_dtype, total_params=params, weight_bytes_total=w_total,
        weight_bytes_per_gpu=w_gpu, budget_bytes_per_gpu=budget, activation_reserve_bytes=act,
        runtime_reserve_bytes=runtime, kv_pool_bytes_per_gpu=pool, kv_layers=m.kv_layers,
        kv_heads_per_gpu=kv_heads_per_gpu(m, tp), kv_bytes_per_token_per_gpu=bpt,
        kv_bytes_per_token_replica=bpt * tp, state_bytes_per_seq_per_gpu=state,
        kv_tokens_per_gpu=int(kv_tokens), full_length_seqs=int(seqs),
        largest_context_tokens=int(min(largest, m.max_position_embeddings) if m.max_position_embeddings
                                   else largest),
        largest_context_by_memory=int(largest),
        model_max_context=m.max_position_embeddings,
        min_utilization_for_max_model_len=round(min_util, 4) if min_util <= 1 else None,
        fits=not reasons, reasons=reasons, notes=notes,
    )


def check_fit(model_id_or_name: ModelArch | str, gpu_count: int, gpu_memory_gib: float, tp: int, max_model_len: int,
              gpu_memory_utilization: float, quantization: str | None = None, dtype: str = "auto") -> list[str]:
    """Reasons a replica cannot fit; empty when it fits *or the model is unknown* (caller refuses).

    For settings validation: ``quantization`` takes the fleet's ``vllm_quantization`` values
    (``awq_marlin`` etc.; ``compressed-tensors`` or None keep the model's own). A :class:`ModelArch`
    (from a config.json, settings' ``vllm_model_config``) is always planned; a name only if it is a
    preset (gpufleet/settings_input.py refuses a name that is not).
    """
    if isinstance(model_id_or_name, str) and find_preset(model_id_or_name) is None:
        return []
    if (quantization or "").strip().lower() == "compressed-tensors":
        quantization = None
    try:
        result = plan_replica(model_id_or_name, max(gpu_count, 1), gpu_memory_gib, tp, max_model_len,
                              gpu_memory_utilization, quantization, dtype=dtype)
    except PlanError as exc:
        return [str(exc)]
    prefix = f"{result.hf_id} on TP={tp} x {gpu_memory_gib:g} GiB at {gpu_memory_utilization:.2f}: "
    reasons = [prefix + r for r in result.reasons]
    if gpu_count < tp and not any("needs" in r and "GPUs" in r for r in result.reasons):
        reasons.insert(0, prefix + f"TP={tp} needs {tp} GPUs; the node has {gpu_count}")
    return reasons


_GPUS = re.compile(r"^\s*(\d+)\s*[xX*]\s*(\d+(?:\.\d+)?)\s*(gib|gb|g|mib|mb|m)?\s*$", re.IGNORECASE)


def parse_gpus(spec: str) -> tuple[int, float]:
    """``2x32`` -> (2, 32.0) GiB; ``2x32607MiB`` -> (2, 31.84). GB/G are read as GiB (GPU convention)."""
    match = _GPUS.match(spec or "")
    if not match:
        raise PlanError(f"--gpus {spec!r}: expected COUNTxMEMORY such as 2x32 (GiB) or 2x32607MiB")
    count, size, unit = int(match.group(1)), float(match.group(2)), (match.group(3) or "gib").lower()
    if unit in ("mib", "mb", "m"):
        size /= 1024
    if count < 1 or size <= 0:
        raise PlanError(f"--gpus {spec!r}: count and memory must be positive")
    return count, size
