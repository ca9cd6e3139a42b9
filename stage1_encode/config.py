"""``EncodeConfig``: everything ``pipeline encode`` needs, validated once, naming the flags."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.device import device_problem
from pipeline.errors import ConfigErrors
from stage1_encode.cache import DEFAULT_BLOCK_NODES, STORAGE_DTYPES
from stage1_encode.models import DEFAULT_MODEL

POOLINGS = ("mean", "last")  # masked mean over real tokens, or the last real token
COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")
BACKENDS = ("hf", "vllm")  # vllm: stage1_encode/vllm_backend.py (decoders only; .venv-vllm on CPU)


@dataclass
class EncodeConfig:
    """Settings of one ``pipeline encode`` run (one shard of a cache).

    ``layers``: None = the model's default rungs, "all", "0,5,10" or "every:K".
    ``dtype``: compute dtype; "auto" = bfloat16 on GPU, float32 on CPU.
    ``batch_tokens``: token budget of a batch, B * T (padded) <= batch_tokens.
    ``block_size``: nodes per committed block (unit of resume and sharding).
    """

    graph: str
    out: Path | None = None
    model: str = DEFAULT_MODEL
    layers: str | None = None
    max_length: int = 256
    batch_tokens: int = 4096
    pooling: str = "mean"
    num_shards: int = 1
    shard_id: int = 0
    dtype: str = "auto"
    storage_dtype: str = "float16"
    device: str = "auto"
    block_size: int = DEFAULT_BLOCK_NODES
    overwrite: bool = False
    trust_remote_code: bool = False
    backend: str = "hf"

    def validate(self) -> None:
        """Raise one InputError listing every problem, each naming its flag."""
        errors = ConfigErrors()
        errors.check(self.max_length >= 1, f"--max-length {self.max_length}: must be >= 1")
        errors.check(
            self.batch_tokens >= self.max_length,
            f"--batch-tokens {self.batch_tokens}: must be >= --max-length ({self.max_length}) so the longest text fits",
        )
        errors.check(self.pooling in POOLINGS, f"--pooling {self.pooling}: expected one of {', '.join(POOLINGS)}")
        errors.check(self.num_shards >= 1, f"--num-shards {self.num_shards}: must be >= 1")
        errors.check(
            0 <= self.shard_id < max(self.num_shards, 1),
            f"--shard-id {self.shard_id}: must be in 0..{self.num_shards - 1} for --num-shards {self.num_shards}",
        )
        errors.check(self.dtype in COMPUTE_DTYPES, f"--dtype {self.dtype}: expected one of {', '.join(COMPUTE_DTYPES)}")
        errors.check(
            self.storage_dtype in STORAGE_DTYPES,
            f"--storage-dtype {self.storage_dtype}: expected one of {', '.join(STORAGE_DTYPES)}",
        )
        errors.check(self.backend in BACKENDS, f"--backend {self.backend}: expected one of {', '.join(BACKENDS)}")
        errors.check(device_problem(self.device) is None, device_problem(self.device) or "")
        errors.check(
            self.block_size >= 8 and self.block_size % 8 == 0,
            f"--block-size {self.block_size}: must be a positive multiple of 8 (blocks are chunk-aligned)",
        )
        errors.raise_if_any()

    def resolved(self) -> dict:
        return asdict(self)


def default_out(graph_name: str, model: str) -> Path:
    """``artifacts/caches/<graph>-<model>.zarr`` (model folders/hub ids reduced to a safe name)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model).name or model)
    return Path("artifacts/caches") / f"{graph_name}-{safe}.zarr"
