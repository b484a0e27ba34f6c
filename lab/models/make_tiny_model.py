"""Make the lab's tiny Qwen3 model offline: random bf16 weights, a locally trained tokenizer.

Usage: python make_tiny_model.py OUT_DIR

Qwen3 architecture (so vLLM runs its real Qwen3 code path), 2 layers, 2 KV heads of 32
(head_dim must be >= 32: with 16 vLLM's CPU attention dies on the first request), vocabulary
1024 from a byte-level BPE trained on generated text, ChatML chat template. Seeded: the same
inputs give the same files. KV cache: 2 (K, V) x 2 layers x 2 heads x 32 x 2 bytes = 512 B/token.
"""

import json
import random
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
WORDS = ("the a GPU node fleet serves tokens model cache vector query answer request replica tensor parallel "
         "memory batch latency throughput prompt completion system user assistant rack host driver kernel "
         "network balancer health metric sequence context length layer head weight bf16 quantized").split()


def main(out: Path) -> None:
    rng = random.Random(5090)
    torch.manual_seed(5090)
    text = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) + rng.choice([".", "?", "!"])
            for _ in range(4000)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=1024, special_tokens=SPECIAL,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None)
    fast.chat_template = CHATML
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["chat_template"] = CHATML
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")

    config = Qwen3Config(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=2048,
                         tie_word_embeddings=True, torch_dtype="bfloat16",
                         eos_token_id=fast.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=fast.convert_tokens_to_ids("<|endoftext|>"),
                         bos_token_id=fast.convert_tokens_to_ids("<|endoftext|>"))
    model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    print(f"tiny Qwen3 in {out}: {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"vocab {len(fast)}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
