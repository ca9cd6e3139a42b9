"""A cache's identity: ``manifest.json``, what makes a cache reproducible and what refills it.

The manifest names its format (``"format": "engine-encode-cache"``, ``"format_version": 1``);
a reader refuses any other version, naming the file, the version and the command that
re-encodes the cache. ``IDENTITY_KEYS`` are the fields two runs must share to fill the same
cache; ``MANIFEST_KEYS`` are those every manifest holds (``read_manifest`` refuses one that
lacks any).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from pipeline import __version__
from pipeline.core import guarded, ownership
from pipeline.core.errors import InputError
from pipeline.core.format_version import FORMAT_VERSION, check_version
from stage1_encode.cache.geometry import chunk_nodes_for

FORMAT = "engine-encode-cache"
MANIFEST_FILE = "manifest.json"
CACHE_MARKS = (MANIFEST_FILE, "zarr.json")  # the files by which a folder is recognised as a cache
# Manifest fields two runs must share to fill the same cache.
IDENTITY_KEYS = (
    "format", "format_version", "weights_sha256", "tokenizer", "max_length", "pooling", "layers", "compute_dtype",
    "storage_dtype", "graph_fingerprint", "num_nodes", "hidden_size", "chunk_nodes", "block_nodes",
    "batch_tokens",  # sets the batch sizes: a resumed block runs the same kernel shapes, so the same bits
    "backend",  # hf and vllm agree to ~1e-6 relative, not bit for bit: resuming must use the same
)
# Fields every manifest holds (new_manifest writes them; the writer adds completed_ranges).
MANIFEST_KEYS = (
    *IDENTITY_KEYS, "model", "model_path", "graph_source", "num_shards", "package_version", "completed_ranges",
)
TEXT_HASH_BYTES = 16


def new_manifest(
    *, model: str, model_path: str, weights_sha256: str, tokenizer: str, max_length: int, pooling: str, layers: list[int],
    compute_dtype: str, storage_dtype: str, graph_source: str, graph_fingerprint: str, num_nodes: int, hidden_size: int,
    block_nodes: int, num_shards: int, batch_tokens: int, backend: str, model_tuning: dict | None = None,
) -> dict:
    """The manifest of a new cache, every field named here once (the writer adds its progress:
    ``completed_ranges``, then ``encode_s``). ``model_tuning``: how a tuned model was trained."""
    itemsize = np.dtype(storage_dtype).itemsize  # of the states array (int8 scales are a separate array)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model,
        "model_path": model_path,
        "weights_sha256": weights_sha256,
        "tokenizer": tokenizer,
        "max_length": max_length,
        "pooling": pooling,
        "layers": layers,
        "compute_dtype": compute_dtype,
        "storage_dtype": storage_dtype,
        "graph_source": graph_source,
        "graph_fingerprint": graph_fingerprint,
        "num_nodes": num_nodes,
        "hidden_size": hidden_size,
        "chunk_nodes": chunk_nodes_for(len(layers), hidden_size, itemsize, block_nodes),
        "block_nodes": block_nodes,
        "num_shards": num_shards,
        "batch_tokens": batch_tokens,
        "backend": backend,
        "package_version": __version__,
        **({"model_tuning": model_tuning} if model_tuning else {}),
    }


def identity_diff(existing: dict, manifest: dict) -> list[str]:
    """Identity keys on which two manifests disagree."""
    return [k for k in IDENTITY_KEYS if existing.get(k) != manifest.get(k)]


def text_hashes(texts) -> np.ndarray:
    """(N, 16) uint8: BLAKE2b-128 of each text's UTF-8 bytes (``texts``: any sequence of str)."""
    out = np.empty((len(texts), TEXT_HASH_BYTES), dtype=np.uint8)
    for i, text in enumerate(texts):
        out[i] = np.frombuffer(hashlib.blake2b(text.encode("utf-8"), digest_size=TEXT_HASH_BYTES).digest(), dtype=np.uint8)
    return out


def rebuild_hint(path: str | Path, manifest: dict | None = None) -> str:
    """How to rebuild a damaged cache: its exact encode command when the manifest is readable."""
    if manifest is not None:
        try:
            return f"rebuild it with `{completion_command(manifest, path)} --overwrite`"
        except (KeyError, TypeError):
            pass
    return f"rebuild it with `pipeline encode GRAPH --out {path} --overwrite`"


def check_cache_version(data: dict, file: Path, cache: str | Path, manifest: dict | None = None) -> None:
    """Refuse a cache file (manifest or block mark, parsed as ``data``) of another format
    version (exit 2), naming the file, the version found and the command that re-encodes the cache."""
    check_version(data, file, rebuild_hint(cache, manifest).replace("rebuild it", "re-encode the cache", 1))


def read_manifest(path: str | Path) -> dict:
    """The manifest of the cache at ``path``: refused (InputError) when the folder is not a
    cache, the manifest is damaged, of another format version, or lacks a field."""
    file = Path(path) / MANIFEST_FILE
    if not file.is_file():
        raise InputError(f"{path}: not an encode cache (no manifest.json); create one with `pipeline encode GRAPH --out {path}`")
    if not (Path(path) / "zarr.json").is_file() and ownership.marker_kind(path) != "cache":
        raise InputError(f"{path}: not an encode cache (a manifest.json but no Zarr group, and no cache marker); "
                         f"give a folder written by `pipeline encode GRAPH --out DIR`")
    manifest = guarded.read_json(file, rebuild_hint(path))
    if str(manifest.get("format", "")).split("/")[0] != FORMAT:
        raise InputError(f"{path}: not an encode cache (its manifest.json has no cache format, found {manifest.get('format')!r}); "
                         f"give a folder written by `pipeline encode GRAPH --out DIR`")
    check_cache_version(manifest, file, path, manifest)
    guarded.require(manifest, MANIFEST_KEYS, file, rebuild_hint(path))
    check_manifest_values(manifest, file, rebuild_hint(path))
    return manifest


def _count(value, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def are_state_indices(layers) -> bool:
    """Whether ``layers`` is what a cache or run stores as its LLM states: a non-empty list of
    distinct integers >= 0."""
    return isinstance(layers, list) and bool(layers) and all(_count(i, 0) for i in layers) and len(set(layers)) == len(layers)


def manifest_problems(manifest: dict) -> list[str]:
    """The fields of a manifest (one holding ``MANIFEST_KEYS``) that ``pipeline encode`` never
    writes so, one line each (empty: none). A reader acts on these values: pooling, token
    budget, layers and dtypes choose what the LLM computes again at infer time."""
    from stage1_encode.cache.quantize import STORAGE_DTYPES
    from stage1_encode.config import BACKENDS, POOLINGS
    from stage1_encode.precision import COMPUTE_DTYPES

    m, problems = manifest, []
    for key, choices in (("pooling", POOLINGS), ("compute_dtype", COMPUTE_DTYPES), ("storage_dtype", STORAGE_DTYPES), ("backend", BACKENDS)):
        if m[key] not in choices:
            problems.append(f"{key} {m[key]!r} is not one of {', '.join(choices)}")
    for key in ("model", "model_path", "weights_sha256", "tokenizer", "graph_source", "graph_fingerprint", "package_version"):
        if not isinstance(m[key], str):
            problems.append(f"{key} {m[key]!r} is not a string")
    for key, least in (("max_length", 1), ("num_nodes", 0), ("hidden_size", 1), ("chunk_nodes", 1), ("block_nodes", 1),
                       ("num_shards", 1), ("batch_tokens", 1)):
        if not _count(m[key], least):
            problems.append(f"{key} {m[key]!r} is not an integer >= {least}")
    if not are_state_indices(m["layers"]):
        problems.append(f"layers {m['layers']!r} are not distinct LLM state indices")
    if not isinstance(m["completed_ranges"], list):
        problems.append(f"completed_ranges {m['completed_ranges']!r} is not a list")
    return problems


def check_manifest_values(manifest: dict, file: Path, rebuild: str) -> None:
    """Refuse as damage a manifest with a value ``pipeline encode`` never writes (:func:`manifest_problems`)."""
    problems = manifest_problems(manifest)
    if problems:
        raise guarded.damaged(file, f"holds values `pipeline encode` never writes ({'; '.join(problems)})", rebuild)


def claim(path: str | Path, overwrite: bool, inputs=()) -> bool:
    """Check ``--out`` before any work (see :func:`pipeline.core.ownership.claim_output`); True
    when it holds a cache (resumed, or replaced with ``--overwrite`` if its settings differ)."""
    return ownership.claim_output(path, "cache", "--out", overwrite=overwrite, inputs=inputs, resume=True)


def remove_cache(path: str | Path) -> None:
    """Delete the cache at ``path`` (only if its ownership marker says this pipeline wrote it)."""
    ownership.remove_owned(path, "cache")


def encode_command(manifest: dict, out: str | Path, layers: list[int] | None = None) -> str:
    """The ``pipeline encode`` command with this cache's settings (``layers`` in place of its own
    when given) writing ``out``."""
    cmd = (
        f"pipeline encode {manifest['graph_source']} --out {out} --model {manifest['model']} "
        f"--layers {','.join(map(str, manifest['layers'] if layers is None else layers))} --max-length {manifest['max_length']} "
        f"--pooling {manifest['pooling']} --dtype {manifest['compute_dtype']} "
        f"--storage-dtype {manifest['storage_dtype']} --block-size {manifest['block_nodes']} "
        f"--batch-tokens {manifest['batch_tokens']}"  # batching changes the last bits: resume with the same budget
    )
    if manifest["backend"] != "hf":
        cmd += f" --backend {manifest['backend']}"
    return cmd


def completion_command(manifest: dict, path: str | Path, shard: int | None = None) -> str:
    """The exact ``pipeline encode`` command that (re)fills the missing blocks."""
    cmd = encode_command(manifest, path)
    if shard is not None:
        cmd += f" --num-shards {manifest['num_shards']} --shard-id {shard}"
    return cmd
