"""Architecture presets for ``gpufleet plan``: the numbers of each model's Hugging Face config.json.

Every preset names the config.json it was transcribed from (``source_url``) and says in
``source_note`` how the numbers were confirmed. The gpufleet build had no live Hub access, so the
values were checked against public verbatim copies of those config.json files (named in each note);
anything that could only be confirmed from a secondary transcription says so, and any number not
confirmed at all is marked UNVERIFIED. To plan a model that is not here, or to check a preset against
the real file, pass the file itself: ``gpufleet plan --config path/to/config.json``.

AWQ/GPTQ repositories keep the base model's architecture (the quantiser rewrites the weights,
not the shapes), so their presets reuse the base numbers with a ``quantization`` set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

QUANTIZATIONS = ("awq", "gptq", "fp8")


@dataclass(frozen=True)
class ModelArch:
    """The parts of a config.json that decide memory. Field names follow config.json."""

    name: str  # short preset name, e.g. qwen3-32b-awq
    hf_id: str  # Hugging Face repository id
    source_url: str
    source_note: str
    num_hidden_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int
    quantization: str | None = None  # None = the checkpoint's 16-bit dtype; else awq / gptq / fp8
    quant_group_size: int = 128
    qk_norm: bool = True  # Qwen3 has per-head q_norm/k_norm; Llama has none
    # --- mixture of experts (0 = dense) --------------------------------------------------------
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0  # Qwen3-Next: one shared expert per MoE layer
    mlp_only_layers: tuple[int, ...] = ()
    decoder_sparse_step: int = 1
    # --- hybrid attention (Qwen3-Next): linear-attention layers keep no per-token KV ---------------
    full_attention_interval: int = 0  # 0 = every layer is full attention
    attn_output_gate: bool = False  # Qwen3-Next gated attention doubles q_proj's output
    linear_num_key_heads: int = 0
    linear_num_value_heads: int = 0
    linear_key_head_dim: int = 0
    linear_value_head_dim: int = 0
    linear_conv_kernel_dim: int = 0
    aliases: tuple[str, ...] = field(default_factory=tuple)

    # ----------------------------------------------------------------- derived layout ---------
    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def is_hybrid(self) -> bool:
        return self.full_attention_interval > 0

    def is_full_attention_layer(self, i: int) -> bool:
        """Qwen3-Next: layer i is full attention when (i + 1) % full_attention_interval == 0."""
        return not self.is_hybrid or (i + 1) % self.full_attention_interval == 0

    def is_moe_layer(self, i: int) -> bool:
        """Qwen3-MoE/Next rule: not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0."""
        return (self.is_moe and i not in self.mlp_only_layers
                and (i + 1) % max(1, self.decoder_sparse_step) == 0)

    @property
    def kv_layers(self) -> int:
        """Layers that keep a per-token KV cache."""
        return sum(1 for i in range(self.num_hidden_layers) if self.is_full_attention_layer(i))


# --------------------------------------------------------------------------------------- sources
_HF = "https://huggingface.co/{}/blob/main/config.json"
_DUMP = ("verbatim config.json copy in github.com/citsjtu2020/LLM-Prof sglang/Model_Config.md "
         "(read through the gpufleet search index)")


def _qwen3_dense(name: str, hf: str, note: str, **kw: Any) -> ModelArch:
    base = dict(vocab_size=151936, head_dim=128, max_position_embeddings=40960, qk_norm=True)
    base.update(kw)
    return ModelArch(name=name, hf_id=hf, source_url=_HF.format(hf), source_note=note, **base)


_PRESETS: list[ModelArch] = [
    # ---- the lab's tiny model (tests/lab): Qwen3Config(...) given in full by the lab code -----------
    ModelArch(
        name="lab-tiny-qwen3", hf_id="gpufleet/lab-tiny-qwen3",
        source_url="gpufleet lab: Qwen3Config(vocab_size=1024, hidden_size=64, intermediate_size=128, "
                   "num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32, "
                   "tie_word_embeddings=True)",
        source_note="The lab's own config, saved in bf16. KV 512 bytes/token in bf16, matching vLLM's CPU "
                    "engine log 'CPU KV cache size: 2,097,152 tokens' for 1 GiB; the lab serves it with "
                    "--dtype float32, 1024 bytes/token.",
        num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, vocab_size=1024, tie_word_embeddings=True,
        max_position_embeddings=40960),
    # ---- Qwen3 dense -------------------------------------------------------------------------------
    _qwen3_dense(
        "qwen3-0.6b", "Qwen/Qwen3-0.6B",
        "Confirmed from a verbatim config.json dump titled 'Qwen/Qwen3-0.6B' (gpufleet search index), "
        "agreeing with the torchtune builder in Joinn99/GR config/modified_qwen3.py.",
        num_hidden_layers=28, hidden_size=1024, intermediate_size=3072, num_attention_heads=16,
        num_key_value_heads=8, tie_word_embeddings=True),
    _qwen3_dense(
        "qwen3-1.7b", "Qwen/Qwen3-1.7B",
        "Confirmed from secondary transcriptions only (levanter experiments/qwen3.py in marin-community/"
        "marin: hidden 2048, intermediate 6144, 16 heads, 8 KV heads, 28 layers; a Qwen3 family test "
        "fixture giving tie_word_embeddings=True). head_dim 128 and vocab 151936 are the Qwen3 family "
        "values; not read from this model's own config.json.",
        num_hidden_layers=28, hidden_size=2048, intermediate_size=6144, num_attention_heads=16,
        num_key_value_heads=8, tie_word_embeddings=True),
    _qwen3_dense("qwen3-4b", "Qwen/Qwen3-4B", "Confirmed: " + _DUMP + ".",
                 num_hidden_layers=36, hidden_size=2560, intermediate_size=9728, num_attention_heads=32,
                 num_key_value_heads=8, tie_word_embeddings=True),
    _qwen3_dense("qwen3-8b", "Qwen/Qwen3-8B", "Confirmed: " + _DUMP + ".",
                 num_hidden_layers=36, hidden_size=4096, intermediate_size=12288, num_attention_heads=32,
                 num_key_value_heads=8, tie_word_embeddings=False),
    _qwen3_dense("qwen3-14b", "Qwen/Qwen3-14B", "Confirmed: " + _DUMP + ".",
                 num_hidden_layers=40, hidden_size=5120, intermediate_size=17408, num_attention_heads=40,
                 num_key_value_heads=8, tie_word_embeddings=False),
    _qwen3_dense("qwen3-32b", "Qwen/Qwen3-32B",
                 "Confirmed: " + _DUMP + "; matches the lead's anchors (64 layers, hidden 5120, 64 heads, "
                 "8 KV heads, head_dim 128, vocab 151936, intermediate 25600, untied).",
                 num_hidden_layers=64, hidden_size=5120, intermediate_size=25600, num_attention_heads=64,
                 num_key_value_heads=8, tie_word_embeddings=False),
    # ---- Qwen3 MoE ---------------------------------------------------------------------------------
    ModelArch(
        name="qwen3-30b-a3b", hf_id="Qwen/Qwen3-30B-A3B", source_url=_HF.format("Qwen/Qwen3-30B-A3B"),
        source_note="Confirmed: " + _DUMP + ".",
        num_hidden_layers=48, hidden_size=2048, intermediate_size=6144, num_attention_heads=32,
        num_key_value_heads=4, head_dim=128, vocab_size=151936, tie_word_embeddings=False,
        max_position_embeddings=40960, num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768),
    ModelArch(
        name="qwen3-235b-a22b", hf_id="Qwen/Qwen3-235B-A22B", source_url=_HF.format("Qwen/Qwen3-235B-A22B"),
        source_note="Confirmed from secondary transcriptions, not a verbatim config.json: slime "
                    "scripts/models/qwen3-235B-A22B.sh (94 layers, hidden 4096, ffn 12288, 64 heads, 4 query "
                    "groups, kv-channels 128, vocab 151936, untied, 128 experts, top-8, moe ffn 1536) and a "
                    "weight-export manifest with the same values. max_position_embeddings 40960 UNVERIFIED "
                    "(assumed equal to Qwen3-30B-A3B's).",
        num_hidden_layers=94, hidden_size=4096, intermediate_size=12288, num_attention_heads=64,
        num_key_value_heads=4, head_dim=128, vocab_size=151936, tie_word_embeddings=False,
        max_position_embeddings=40960, num_experts=128, num_experts_per_tok=8, moe_intermediate_size=1536),
    ModelArch(
        name="qwen3-next-80b-a3b-instruct", hf_id="Qwen/Qwen3-Next-80B-A3B-Instruct",
        source_url=_HF.format("Qwen/Qwen3-Next-80B-A3B-Instruct"),
        source_note="Partly verbatim: a config dump titled 'Qwen/Qwen3-Next-80B-A3B-Instruct' gives "
                    "full_attention_interval 4, head_dim 256, hidden 2048, intermediate 5120, linear_* "
                    "(16 key heads, 32 value heads, 128/128 dims, conv kernel 4), moe_intermediate 512, "
                    "max_position 262144. The rest (48 layers, 16 heads, 2 KV heads, 512 experts, 10 per "
                    "token, shared expert 512, vocab 151936, untied) from a transcription of the same-"
                    "architecture Qwen3-Coder-Next config.json and a fixture note on revision 9c7f2fbe "
                    "('16:2' heads, 512 experts, 10 per token, untied). The MTP draft layer is not counted.",
        num_hidden_layers=48, hidden_size=2048, intermediate_size=5120, num_attention_heads=16,
        num_key_value_heads=2, head_dim=256, vocab_size=151936, tie_word_embeddings=False,
        max_position_embeddings=262144, qk_norm=True, num_experts=512, num_experts_per_tok=10,
        moe_intermediate_size=512, shared_expert_intermediate_size=512, full_attention_interval=4,
        attn_output_gate=True, linear_num_key_heads=16, linear_num_value_heads=32,
        linear_key_head_dim=128, linear_value_head_dim=128, linear_conv_kernel_dim=4,
        aliases=("qwen3-next-80b-a3b",)),
    # ---- Llama -------------------------------------------------------------------------------------
    ModelArch(
        name="llama-3.3-70b-instruct", hf_id="meta-llama/Llama-3.3-70B-Instruct",
        source_url=_HF.format("meta-llama/Llama-3.3-70B-Instruct"),
        source_note="Confirmed from a secondary transcription (oumi configs/recipes/llama3_3/README.md: "
                    "vocab 128256, hidden 8192, intermediate 28672, 80 layers, 64 heads, 8 KV heads, "
                    "untied, max length 131072). head_dim 128 derived as hidden/heads (config has no "
                    "head_dim key).",
        num_hidden_layers=80, hidden_size=8192, intermediate_size=28672, num_attention_heads=64,
        num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=False,
        max_position_embeddings=131072, qk_norm=False),
]


def _quantized(base: str, name: str, hf: str, quant: str, note: str) -> ModelArch:
    arch = next(p for p in _PRESETS if p.name == base)
    return replace(arch, name=name, hf_id=hf, source_url=_HF.format(hf), quantization=quant, aliases=(),
                   source_note=f"{note} Architecture numbers from {arch.hf_id}: {arch.source_note}")


_PRESETS += [
    _quantized("qwen3-4b", "qwen3-4b-awq", "Qwen/Qwen3-4B-AWQ", "awq", "Official Qwen AWQ (4-bit, g128)."),
    _quantized("qwen3-8b", "qwen3-8b-awq", "Qwen/Qwen3-8B-AWQ", "awq", "Official Qwen AWQ (4-bit, g128)."),
    _quantized("qwen3-14b", "qwen3-14b-awq", "Qwen/Qwen3-14B-AWQ", "awq", "Official Qwen AWQ (4-bit, g128)."),
    _quantized("qwen3-32b", "qwen3-32b-awq", "Qwen/Qwen3-32B-AWQ", "awq",
               "Official Qwen AWQ (4-bit, g128); vLLM 0.28 reports 18.00 GiB weights, 9.01 GiB per GPU "
               "at TP=2 (third-party run, see planner docstring)."),
    _quantized("qwen3-30b-a3b", "qwen3-30b-a3b-gptq-int4", "Qwen/Qwen3-30B-A3B-GPTQ-Int4", "gptq",
               "Official Qwen GPTQ int4 (g128 assumed)."),
    _quantized("llama-3.3-70b-instruct", "llama-3.3-70b-instruct-awq", "casperhansen/llama-3.3-70b-instruct-awq",
               "awq", "Community AWQ (4-bit, g128) widely served with vLLM."),
]

PRESETS: dict[str, ModelArch] = {p.name: p for p in _PRESETS}


def _norm(key: str) -> str:
    return key.strip().lower()


_INDEX: dict[str, ModelArch] = {}
for _p in _PRESETS:
    for _k in (_p.name, _p.hf_id, *_p.aliases):
        _INDEX[_norm(_k)] = _p


def find_preset(name_or_id: str) -> ModelArch | None:
    """A preset by short name (``qwen3-32b-awq``) or Hugging Face id (``Qwen/Qwen3-32B-AWQ``), any case."""
    return _INDEX.get(_norm(name_or_id))


def known_names() -> list[str]:
    return sorted(PRESETS)


# --------------------------------------------------------------------------- config.json loading
def _quant_from_config(cfg: dict[str, Any]) -> tuple[str | None, int]:
    q = cfg.get("quantization_config") or {}
    method = str(q.get("quant_method", "")).lower()
    group = int(q.get("group_size", q.get("q_group_size", 128)) or 128)
    if method in ("awq", "awq_marlin"):
        return "awq", group
    if method in ("gptq", "gptq_marlin"):
        return "gptq", group
    if method == "fp8":
        return "fp8", group
    if method == "compressed-tensors":
        bits = None
        for g in (q.get("config_groups") or {}).values():
            bits = ((g or {}).get("weights") or {}).get("num_bits", bits)
            group = int(((g or {}).get("weights") or {}).get("group_size") or group)
        return ("awq" if bits == 4 else "fp8" if bits == 8 else None), group
    return None, group


def arch_from_config(cfg: dict[str, Any], name: str = "custom", source: str = "config.json") -> ModelArch:
    """A :class:`ModelArch` from a Hugging Face config.json dict (nested ``text_config`` accepted)."""
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
    merged = {**cfg, **text}
    try:
        hidden = int(merged["hidden_size"])
        heads = int(merged["num_attention_heads"])
        layers = int(merged["num_hidden_layers"])
        vocab = int(merged["vocab_size"])
    except KeyError as exc:
        raise ValueError(f"config.json lacks {exc.args[0]!r}") from None
    quant, group = _quant_from_config(cfg)
    model_type = str(merged.get("model_type", ""))
    interval = int(merged.get("full_attention_interval") or 0)
    layer_types = merged.get("layer_types")
    if not interval and isinstance(layer_types, list) and "linear_attention" in layer_types:
        interval = 4  # Qwen3-Next convention; layer_types is checked against it below
    if isinstance(layer_types, list) and interval:
        expected = ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(layers)]
        if layer_types != expected:
            raise ValueError("layer_types does not follow a full_attention_interval pattern; not supported")
    return ModelArch(
        name=name, hf_id=str(merged.get("_name_or_path") or name), source_url=source,
        source_note=f"read from {source}",
        num_hidden_layers=layers, hidden_size=hidden,
        intermediate_size=int(merged.get("intermediate_size") or 0),
        num_attention_heads=heads,
        num_key_value_heads=int(merged.get("num_key_value_heads") or heads),
        head_dim=int(merged.get("head_dim") or hidden // heads),
        vocab_size=vocab, tie_word_embeddings=bool(merged.get("tie_word_embeddings", False)),
        max_position_embeddings=int(merged.get("max_position_embeddings") or 0),
        quantization=quant, quant_group_size=group,
        qk_norm=model_type.startswith(("qwen3",)),
        num_experts=int(merged.get("num_experts") or merged.get("num_local_experts") or 0),
        num_experts_per_tok=int(merged.get("num_experts_per_tok") or 0),
        moe_intermediate_size=int(merged.get("moe_intermediate_size") or 0),
        shared_expert_intermediate_size=int(merged.get("shared_expert_intermediate_size") or 0),
        mlp_only_layers=tuple(merged.get("mlp_only_layers") or ()),
        decoder_sparse_step=int(merged.get("decoder_sparse_step") or 1),
        full_attention_interval=interval,
        attn_output_gate=model_type == "qwen3_next" or bool(merged.get("attn_output_gate", False)),
        linear_num_key_heads=int(merged.get("linear_num_key_heads") or 0),
        linear_num_value_heads=int(merged.get("linear_num_value_heads") or 0),
        linear_key_head_dim=int(merged.get("linear_key_head_dim") or 0),
        linear_value_head_dim=int(merged.get("linear_value_head_dim") or 0),
        linear_conv_kernel_dim=int(merged.get("linear_conv_kernel_dim") or 0),
    )


def load_config_file(path: str | Path) -> ModelArch:
    p = Path(path)
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {p}: {exc}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{p}: not a JSON object")
    return arch_from_config(cfg, name=p.parent.name or p.stem, source=str(p))
