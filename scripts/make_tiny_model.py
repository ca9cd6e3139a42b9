"""Write a tiny random-weight Llama model folder for scale runs (measures the system, not accuracy).

    python scripts/make_tiny_model.py OUT_DIR [--hidden-size 64] [--layers 4] [--seed 0]
    pipeline encode GRAPH --model OUT_DIR --max-length 32 --layers all

The tokenizer is SmolLM2's (real BPE over real words, so texts tokenize as they would for a
real model), copied from ``artifacts/models/smollm2-135m`` (created on first use of the
built-in ``smollm2-135m``), or from ``--tokenizer-from FOLDER``. Weights are random (seeded),
in fp32 safetensors. Defaults: H = 64, 4 layers (5 hidden states), 4 heads of 16, 2 KV heads,
intermediate 128; about 3.2 M parameters, almost all in the embedding table.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def make_tiny_model(out: Path, hidden_size: int = 64, layers: int = 4, heads: int = 4, kv_heads: int = 2,
                    intermediate_size: int | None = None, seed: int = 0,
                    tokenizer_from: Path = Path("artifacts/models/smollm2-135m")) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    tokenizer_from = Path(tokenizer_from)
    if not (tokenizer_from / "tokenizer.json").is_file():
        sys.exit(f"--tokenizer-from {tokenizer_from}: no tokenizer.json; run `pipeline encode cora --model smollm2-135m` once "
                 "(converts the built-in SmolLM2 into artifacts/models/smollm2-135m) or pass another tokenizer folder")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    config = LlamaConfig(
        hidden_size=hidden_size, intermediate_size=intermediate_size or 2 * hidden_size, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=len(tokenizer),
        max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaModel(config).eval()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (tokenizer_from / name).is_file():
            shutil.copy2(tokenizer_from / name, out / name)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--intermediate-size", type=int, default=None, help="default: 2 x hidden size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer-from", type=Path, default=Path("artifacts/models/smollm2-135m"))
    a = p.parse_args()
    out = make_tiny_model(a.out, a.hidden_size, a.layers, a.heads, a.kv_heads, a.intermediate_size, a.seed, a.tokenizer_from)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
