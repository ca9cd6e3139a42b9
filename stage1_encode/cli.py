"""``pipeline encode`` and ``pipeline bench encode``: build the typed config and call ``run``.

Only light imports here (typer, the config dataclass) so that ``pipeline --help`` is fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.config_file import ConfigOption
from pipeline.errors import InputError
from stage1_encode.cache import DEFAULT_BLOCK_NODES
from stage1_encode.config import EncodeConfig
from stage1_encode.models import DEFAULT_MODEL

MODEL_HELP = "Built-in name (smollm2-135m: SmolLM2-135M, Llama, 30 layers; minilm-l6: all-MiniLM-L6-v2, BERT, 6 layers), a local HF folder, or an HF hub id."


def encode_command(
    graph: Optional[str] = typer.Argument(None, help="Built-in dataset (cora, citeseer) or a graph folder (nodes.parquet, edges.parquet)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Cache folder (Zarr). Default: artifacts/caches/<graph>-<model>.zarr."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help=MODEL_HELP),
    layers: Optional[str] = typer.Option(None, "--layers", help="LLM states to keep: all, 0,5,10 or every:K (0 = embeddings; the last state is always kept). Default: ~7 spread evenly."),
    max_length: int = typer.Option(256, "--max-length", help="Tokens per text (longer texts are truncated)."),
    batch_tokens: int = typer.Option(4096, "--batch-tokens", help="Token budget per batch: batch size x padded length."),
    pooling: str = typer.Option("mean", "--pooling", help="mean (masked mean over tokens) or last (last non-pad token)."),
    num_shards: int = typer.Option(1, "--num-shards", help="Split the work into N shards run by N processes/jobs on the same --out."),
    shard_id: int = typer.Option(0, "--shard-id", help="Which shard this process fills (0..N-1)."),
    dtype: str = typer.Option("auto", "--dtype", help="Compute dtype: auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16."),
    storage_dtype: str = typer.Option("float16", "--storage-dtype", help="Cache dtype: float16, float32 (if float16 overflows) or int8 (per node and state absmax scale; read back as float32; S x H + 4 S bytes a node)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    block_size: int = typer.Option(DEFAULT_BLOCK_NODES, "--block-size", help="Nodes per committed block (the unit of resume and sharding; multiple of 8)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a cache of another model/graph/settings at --out."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow a hub model's own Python code to run."),
    backend: str = typer.Option("hf", "--backend", help="hf (transformers) or vllm (decoder LLMs; CPU: bash scripts/setup_vllm.sh, then .venv-vllm/bin/pipeline)."),
    status: Optional[Path] = typer.Option(None, "--status", help="Only report how complete the cache CACHE_DIR is, and exit."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Encode every node text with a frozen LLM into a per-layer Zarr cache.

    Each selected hidden state is pooled (masked mean or last token) and stored as one
    (N, S, H) float16 array with a manifest. Work is committed in node blocks: a killed run
    resumes where it stopped, shards (--num-shards/--shard-id) fill one cache together, and
    re-running a finished encode is a quick no-op. `pipeline encode --status CACHE_DIR`
    reports completion.
    """
    if status is not None:
        from stage1_encode.cache import status_text

        text, _ = status_text(status)
        typer.echo(text)
        return
    if graph is None:
        raise InputError("missing GRAPH: give a built-in dataset (cora, citeseer) or a graph folder, or --status CACHE_DIR")
    from stage1_encode.run import run

    run(
        EncodeConfig(
            graph=graph, out=out, model=model, layers=layers, max_length=max_length, batch_tokens=batch_tokens,
            pooling=pooling, num_shards=num_shards, shard_id=shard_id, dtype=dtype, storage_dtype=storage_dtype,
            device=device, block_size=block_size, overwrite=overwrite, trust_remote_code=trust_remote_code, backend=backend,
        )
    )


def bench_encode_command(
    graph: str = typer.Argument("cora", help="Built-in dataset or graph folder."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help=MODEL_HELP),
    limit: int = typer.Option(256, "--limit", help="Encode the first N texts (0 = all)."),
    max_length: int = typer.Option(256, "--max-length", help="Tokens per text."),
    batch_tokens: int = typer.Option(4096, "--batch-tokens", help="Token budget per batch of `encode`."),
    layers: Optional[str] = typer.Option(None, "--layers", help="States `encode` keeps (default: ~7 spread evenly)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
    backend: str = typer.Option("hf", "--backend", help="vllm: also time --backend vllm on the same texts and report both."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Time `encode` against a naive loop (batch 32, padded to max length, last layer only).

    Prints texts/s and tokens/s of both and their ratio, model FLOPs/s as a fraction of this
    machine's measured fp32 matmul rate, and cache bytes per node against the reference
    format (all layers, fp32). Nothing is written except --json.
    """
    from stage1_encode.bench import BenchConfig, run_bench

    run_bench(
        BenchConfig(
            graph=graph, model=model, limit=limit, max_length=max_length, batch_tokens=batch_tokens,
            layers=layers, device=device, json_path=json_path, backend=backend,
        )
    )
