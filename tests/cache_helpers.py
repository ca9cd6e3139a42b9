"""Small caches written directly with the cache writer (no model run): the manifest
``pipeline encode`` would write for made-up settings (test helpers)."""

from __future__ import annotations

from stage1_encode.cache.manifest import new_manifest


def small_manifest(*, layers: list[int], num_nodes: int, hidden_size: int, block_nodes: int, storage_dtype: str,
                   num_shards: int = 1) -> dict:
    """A complete manifest (:func:`stage1_encode.cache.manifest.new_manifest`) of a made-up model and graph."""
    return new_manifest(
        model="m", model_path="m", weights_sha256="ab" * 32, tokenizer="t", max_length=16, pooling="mean", layers=layers,
        compute_dtype="float32", storage_dtype=storage_dtype, graph_source="g", graph_fingerprint="f" * 64,
        num_nodes=num_nodes, hidden_size=hidden_size, block_nodes=block_nodes, num_shards=num_shards, batch_tokens=4096,
        backend="hf",
    )
