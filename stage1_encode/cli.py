"""``pipeline encode`` and ``pipeline bench encode``: the commands are generated from their
config dataclasses (pipeline/core/options.py), which declare every flag once.

Only light imports here (typer, the config dataclasses) so that ``pipeline --help`` is fast.
"""

from __future__ import annotations

import typer

from pipeline.core.errors import EXIT_INCOMPLETE, InputError
from pipeline.core.options import command
from stage1_encode.bench import BenchConfig
from stage1_encode.config import EncodeConfig


def _encode(config: EncodeConfig) -> None:
    if config.status is not None:
        from stage1_encode.cache import status_text

        text, complete = status_text(config.status)
        typer.echo(text)
        if not complete:  # schedulers chain on the exit status, not the text
            raise typer.Exit(EXIT_INCOMPLETE)
        return
    if config.graph is None:
        raise InputError("missing GRAPH: give a built-in dataset (cora, citeseer) or a graph folder, or --status CACHE_DIR")
    from stage1_encode.run import run

    run(config)


def _bench(config: BenchConfig) -> None:
    from stage1_encode.bench import run_bench

    run_bench(config)


encode_command = command(EncodeConfig, _encode, """Encode every node text with a frozen LLM into a per-layer Zarr cache.

    Each selected hidden state is pooled (masked mean or last token) and stored as one
    (N, S, H) float16 array with a manifest. Work is committed in node blocks: a killed run
    resumes where it stopped, shards (--num-shards/--shard-id) fill one cache together, and
    re-running a finished encode is a quick no-op. `pipeline encode --status CACHE_DIR`
    reports completion: exit 0 complete, 3 incomplete. `--reuse OLD_CACHE` updates a cache for a grown or edited graph: the
    result is the cache a full encode of GRAPH gives (rows the LLM computes again may differ
    from it by one storage step: the same text in a batch of another size can round differently).
    """)

bench_encode_command = command(BenchConfig, _bench, """Time `encode` against a naive loop (batch 32, padded to max length, last layer only).

    Prints texts/s and tokens/s of both and their ratio, model FLOPs/s as a fraction of this
    machine's measured fp32 matmul rate, and cache bytes per node against the reference
    format (all layers, fp32). Nothing is written except --json.
    """)
