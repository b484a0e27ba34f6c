"""The lab's vLLM smoke test: what it runs, and that its failure names the CPU."""

from gpufleet.lab.topology import lab_group_data
from gpufleet.lab.vllm_smoke import completion_probe, cpu_summary, serve_args
from operations.weights import MODEL_MOUNT

XEON = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse2 avx2 fma f16c avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8 sha_ni
"""


def test_cpu_summary_names_the_model_and_the_kernel_relevant_flags():
    summary = cpu_summary(XEON)
    assert summary.startswith("Intel(R) Xeon(R) Platinum 8480+; flags: ")
    assert summary.split("flags: ")[1].split() == sorted(
        ["amx_bf16", "amx_int8", "amx_tile", "avx2", "avx512_bf16", "avx512_fp16", "avx512f", "f16c", "fma"])


def test_smoke_runs_the_labs_own_flags_and_asks_for_a_real_completion():
    data = lab_group_data()
    args = serve_args(data)
    # The model where a node mounts its staged copy (the smoke test mounts lab/models/qwen3-tiny there).
    assert args[0] == MODEL_MOUNT and args[args.index("--dtype") + 1] == "float32"
    probe = completion_probe(data["vllm_served_model_name"])
    assert "/v1/completions" in probe and f'"model": "{data["vllm_served_model_name"]}"' in probe
