"""``EncodeConfig``: everything ``pipeline encode`` needs, validated once, naming the flags."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import ConfigErrors
from pipeline.core.devices import device_problem
from pipeline.core.options import argument, choice_problems, device_option, option, out_option, overwrite_option
from stage1_encode.cache.geometry import DEFAULT_BLOCK_NODES
from stage1_encode.cache.quantize import STORAGE_DTYPES
from stage1_encode.models import BUILTIN_MODELS, DEFAULT_MODEL

MODEL_HELP = (
    "Built-in name ("
    + "; ".join(f"{name}: {b.description}" + (f", extra [{b.extra}]" if b.extra else "") for name, b in BUILTIN_MODELS.items())
    + "), a local HF folder, or an HF hub id."
)

POOLINGS = ("mean", "last")  # masked mean over real tokens, or the last real token
COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")
BACKENDS = ("hf", "vllm")  # vllm: stage1_encode/vllm_backend.py (decoders only; .venv-vllm on CPU)
# Sane upper bounds: beyond them a flag is a typo that would reach the allocator.
MAX_BLOCK, MAX_BATCH_TOKENS, MAX_SHARDS = 1 << 20, 1 << 24, 100_000


def model_option(default: str | None = DEFAULT_MODEL, help: str = MODEL_HELP) -> str:
    """``--model``: the LLM, shared by every command that loads one."""
    return option(default, help)


@dataclass
class EncodeConfig:
    """Settings of one ``pipeline encode`` run (one shard of a cache).

    ``layers``: None = the model's default rungs, "all", "0,5,10" or "every:K".
    ``dtype``: compute dtype; "auto" = bfloat16 on GPU, float32 on CPU.
    ``batch_tokens``: token budget of a batch, B * T <= batch_tokens (texts of one token count a batch).
    ``block_size``: nodes per committed block (unit of resume and sharding).
    ``reuse``: an older cache whose rows of unchanged nodes (same id and text) are copied
    (stage1_encode/reuse.py); None encodes every node.
    """

    graph: str | None = argument(
        None, "Built-in dataset (cora, citeseer) or a graph folder (nodes.parquet, edges.parquet).", metavar="GRAPH"
    )
    out: Path | None = out_option("the Zarr cache. Default: artifacts/caches/<graph>-<model>.zarr", None)
    model: str = model_option()
    layers: str | None = option(
        None, "LLM states to keep: all, 0,5,10 or every:K (0 = embeddings; the last state is always kept). Default: ~7 spread evenly."
    )
    max_length: int = option(256, "Tokens per text (longer texts are truncated).")
    batch_tokens: int = option(4096, "Token budget per batch: batch size x padded length.")
    pooling: str = option("mean", "mean (masked mean over tokens) or last (last non-pad token).", choices=POOLINGS)
    num_shards: int = option(1, "Split the work into N shards run by N processes/jobs on the same --out.")
    shard_id: int = option(0, "Which shard this process fills (0..N-1).")
    dtype: str = option("auto", "Compute dtype: auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16.", choices=COMPUTE_DTYPES)
    storage_dtype: str = option("float16", "Cache dtype: float16, float32 (if float16 overflows) or int8 (per node and state "
                                "absmax scale; read back as float32; S x H + 4 S bytes a node).", choices=STORAGE_DTYPES)
    device: str = device_option()
    block_size: int = option(DEFAULT_BLOCK_NODES, "Nodes per committed block (the unit of resume and sharding; multiple of 8).")
    overwrite: bool = overwrite_option("a cache (of another model, graph or settings)")
    trust_remote_code: bool = option(False, "Allow a hub model's own Python code to run.")
    backend: str = option("hf", "hf (transformers) or vllm (decoder LLMs; CPU: bash scripts/setup_vllm.sh, then .venv-vllm/bin/pipeline).", choices=BACKENDS)
    reuse: Path | None = option(
        None, "An older cache of an earlier version of GRAPH (same settings): rows of nodes whose id and text are unchanged "
        "are copied, only new or edited texts run through the LLM. It is only read.", metavar="OLD_CACHE"
    )
    status: Path | None = option(None, "Only report how complete the cache CACHE_DIR is, and exit.", metavar="CACHE_DIR")

    def validate(self) -> None:
        """Raise one InputError listing every problem, each naming its flag."""
        errors = ConfigErrors()
        errors.check(self.max_length >= 1, f"--max-length {self.max_length}: must be >= 1")
        errors.check(
            self.batch_tokens >= self.max_length,
            f"--batch-tokens {self.batch_tokens}: must be >= --max-length ({self.max_length}) so the longest text fits",
        )
        for problem in choice_problems(self):
            errors.add(problem)
        errors.check(self.num_shards >= 1, f"--num-shards {self.num_shards}: must be >= 1")
        errors.check(
            0 <= self.shard_id < max(self.num_shards, 1),
            f"--shard-id {self.shard_id}: must be in 0..{self.num_shards - 1} for --num-shards {self.num_shards}",
        )
        errors.check(
            self.reuse is None or self.backend == "hf",
            f"--reuse with --backend {self.backend}: reuse needs --backend hf (vLLM schedules texts together, so a row may depend on its batch)",
        )
        errors.check(device_problem(self.device) is None, device_problem(self.device) or "")
        errors.check(
            self.block_size >= 8 and self.block_size % 8 == 0,
            f"--block-size {self.block_size}: must be a positive multiple of 8 (blocks are chunk-aligned)",
        )
        for flag, value, most in (("--block-size", self.block_size, MAX_BLOCK), ("--batch-tokens", self.batch_tokens, MAX_BATCH_TOKENS),
                                  ("--num-shards", self.num_shards, MAX_SHARDS)):
            errors.check(value <= most, f"{flag} {value}: must be <= {most}")
        errors.raise_if_any()



def default_out(graph_name: str, model: str) -> Path:
    """``artifacts/caches/<graph>-<model>.zarr`` (model folders/hub ids reduced to a safe name)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model).name or model)
    return Path("artifacts/caches") / f"{graph_name}-{safe}.zarr"
