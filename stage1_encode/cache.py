"""The encode cache: the ONLY module that knows its format (writer and reader).

Layout of ``CACHE_DIR`` (a Zarr v3 group plus two JSON files and a marker folder)::

    zarr.json             group metadata
    states/               float16 (or float32, or int8) array (N, S, H): pooled LLM state of
                          rung s for node n; chunks (chunk_nodes, S, H), no compressor
    scales/               int8 caches only: float32 (N, S), the absmax scale of each int8 row
                          (state s of node n is ``states[n, s] * scales[n, s]``); chunks
                          (chunk_nodes, S), so a block's scales share its chunks' node rows
    node_ids/             (N,) the user's node ids (int64 or string), in graph order
    text_hashes/          (N, 16) uint8: BLAKE2b-128 of each node's UTF-8 text, in graph order
                          (what ``pipeline encode --reuse`` compares; absent in older caches)
    manifest.json         what makes the cache reproducible (see ``IDENTITY_KEYS``), and
                          ``self_check``: the first texts' deviation from the model's own
                          forward (stage1_encode/self_check.py)
    encode_config.json    the resolved ``pipeline encode`` config that created it
    blocks/000012.done    completion mark of node block 12 (written after its data): its node
                          range, the digest of the bytes it stored (``content_digest``)
                          and the seconds its encode took
    .pipeline-artifact.json  the ownership marker (kind "cache"; pipeline/core/ownership.py)

Work is split into chunk-aligned node blocks of ``block_nodes`` nodes. A block's data is
written first and its mark after; a block is complete when it has its mark AND each of its
chunk files exists with its full size (every chunk is written, zeros included), so a chunk
lost or truncated later is found (``damaged_blocks``): ``encode`` re-encodes those blocks,
``--status`` lists them and readers refuse them. A run killed at any moment redoes only
incomplete blocks and, as each block's computation depends only on its own texts, ends with
the same bytes as an uninterrupted run. Shard I of N owns blocks
``b % N == I``; disjoint blocks touch disjoint chunks, so writers need no locks. The cache
folder is created in a temp folder and renamed, so concurrent shards agree on one creator.

Chunk size: (8, S, H) was fastest for random node reads at S = 32, H = 1024 (524 KB
chunks, 20k nodes, fp16). Re-measured here (N = 20,000, S = 7, H = 576, fp16, 2 shared cores, warm
page cache), chunk nodes -> write all / read 1,024 random nodes / read all:
4: 12.8 / 0.96 / 5.3 s;  8: 8.7 / 1.02 / 2.4 s;  16: 7.6 / 1.03 / 1.9 s;  32: 5.0 / 0.88 / 1.6 s;
64: 4.7 / 0.72 / 1.6 s. Per-chunk overhead dominates until chunks reach a few hundred KB,
so ``chunk_nodes_for`` picks the largest power of two (<= 64) whose chunk stays <= 512 KiB:
64 for SmolLM2 (8 KB a node), 8 for a 7B model with 7 rungs (57 KB a node).

int8 storage (``--storage-dtype int8``) quantizes each pooled state (one row of H values)
symmetrically: ``scale = absmax / 127`` (float32), ``q = round(x / scale)`` in [-127, 127].
Every reader returns ``q * scale`` as float32 (:func:`dequantize_int8`), so the rest of the
pipeline never sees int8. Error bound per element: ``|x - q * scale| <= scale / 2 +
128 * scale * 2**-24`` (half a step, plus float32 rounding of the division and of the
product; see :func:`quantize_int8`). Bytes per node: S * H + 4 * S.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import threading
from pathlib import Path

import numpy as np

from pipeline import __version__
from pipeline.core import atomic, guarded, ownership
from pipeline.core.errors import InputError, PipelineError
from pipeline.core.graph import FINGERPRINT_VERSION

FORMAT = "engine-encode-cache/1"
MANIFEST_FILE = "manifest.json"
CACHE_MARKS = (MANIFEST_FILE, "zarr.json")  # the files by which a folder is recognised as a cache
MAX_CHUNK_NODES = 64
MAX_CHUNK_BYTES = 512 << 10
DEFAULT_BLOCK_NODES = 256
MAX_OPEN_CHUNKS = 1 << 16  # chunk files a reader keeps open for row reads (and at most half the fd limit)
DENSE_CHUNK_ROWS = 8  # wanted rows from which read_rows reads a whole chunk rather than row by row
# Manifest fields two runs must share to fill the same cache.
IDENTITY_KEYS = (
    "format", "weights_sha256", "tokenizer", "max_length", "pooling", "layers", "compute_dtype",
    "storage_dtype", "graph_fingerprint", "num_nodes", "hidden_size", "chunk_nodes", "block_nodes",
    "batch_tokens",  # sets the batch sizes: a resumed block runs the same kernel shapes, so the same bits
    "backend",  # hf and vllm agree to ~1e-6 relative, not bit for bit: resuming must use the same
    "batching",  # how texts share a batch (see stage1_encode/run.py): padded batches change the last bits
)
BATCHING = "by-length"  # batches of texts with equal token counts, no padding: a row depends on its text (last bits: batch size)
IDENTITY_DEFAULTS = {"backend": "hf", "batching": "padded"}  # caches written before a key existed
TEXT_HASH_BYTES = 16
STORAGE_DTYPES = ("float16", "float32", "int8")
INT8_LEVELS = 127  # symmetric int8: q in [-127, 127], so -x quantizes to -q


def stored_bytes_per_node(num_rungs: int, hidden_size: int, storage_dtype: str) -> int:
    """Array bytes a node takes in a cache: S x H values, plus S float32 scales for int8."""
    if storage_dtype == "int8":
        return num_rungs * hidden_size + 4 * num_rungs
    return num_rungs * hidden_size * np.dtype(storage_dtype).itemsize


def value_dtype(storage_dtype: str) -> np.dtype:
    """What readers return for a storage dtype: int8 rows come back dequantized to float32."""
    return np.dtype(np.float32 if storage_dtype == "int8" else storage_dtype)


def quantize_int8(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., H) float32 rows -> (q (..., H) int8, scale (...,) float32), one absmax scale per row.

    ``scale = fl32(absmax / 127)``; ``q = rint(x / scale)`` with the quotient in float64 (exact
    to 2**-53, so q is the nearest step to x). Since ``scale >= absmax / 127 * (1 - 2**-24)``,
    ``|x / scale| < 127.5`` and q never needs clipping. A zero row gets scale 0 and q 0.
    """
    values = np.asarray(values, dtype=np.float32)
    scale = (np.abs(values).max(axis=-1) / np.float32(INT8_LEVELS)).astype(np.float32)  # (...,)
    safe = np.where(scale > 0, scale, np.float32(1)).astype(np.float64)[..., None]
    q = np.rint(values.astype(np.float64) / safe)
    return np.clip(q, -INT8_LEVELS, INT8_LEVELS).astype(np.int8), scale


def dequantize_int8(q: np.ndarray, scale: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(..., H) int8 rows and their (...,) float32 scales -> float32 ``q * scale`` (one rounding)."""
    return np.multiply(q, scale[..., None], out=out, dtype=np.float32)


def round_like_storage(values, storage_dtype: str):
    """Fresh float32 states (..., H) (numpy or torch) -> the float32 values a cache of
    ``storage_dtype`` gives back for them: what training read, so fresh and cached agree."""
    import torch

    if storage_dtype == "float32":
        return values
    if storage_dtype == "float16":
        return values.half().float() if isinstance(values, torch.Tensor) else values.astype(np.float16).astype(np.float32)
    if storage_dtype == "int8":
        as_numpy = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values
        out = dequantize_int8(*quantize_int8(as_numpy))
        return torch.from_numpy(out).to(values.device) if isinstance(values, torch.Tensor) else out
    raise ValueError(f"unknown storage dtype {storage_dtype!r}")


def identity_diff(existing: dict, manifest: dict) -> list[str]:
    """Identity keys on which two manifests disagree (a missing key reads as its default)."""
    return [k for k in IDENTITY_KEYS if existing.get(k, IDENTITY_DEFAULTS.get(k)) != manifest.get(k, IDENTITY_DEFAULTS.get(k))]


def text_hashes(texts) -> np.ndarray:
    """(N, 16) uint8: BLAKE2b-128 of each text's UTF-8 bytes (``texts``: any sequence of str)."""
    out = np.empty((len(texts), TEXT_HASH_BYTES), dtype=np.uint8)
    for i, text in enumerate(texts):
        out[i] = np.frombuffer(hashlib.blake2b(text.encode("utf-8"), digest_size=TEXT_HASH_BYTES).digest(), dtype=np.uint8)
    return out


def chunk_nodes_for(num_rungs: int, hidden_size: int, itemsize: int, block_nodes: int) -> int:
    """Nodes per chunk: largest power of two <= 64 with a chunk <= 512 KiB that divides the block."""
    c = MAX_CHUNK_NODES
    while c > 1 and (c * num_rungs * hidden_size * itemsize > MAX_CHUNK_BYTES or block_nodes % c):
        c //= 2
    return c


MEMORY_CAP = 8 << 30  # bytes of cached states a process holds in memory at most


def memory_budget() -> int:
    """Bytes of cached states a process may hold in memory: ``MEMORY_CAP`` or half the memory
    available now, whichever is less. The one rule every reader of states uses to choose
    between reading rungs whole and reading rows (or training out of core)."""
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return MEMORY_CAP
    return min(MEMORY_CAP, avail // 2)


def num_blocks(num_nodes: int, block_nodes: int) -> int:
    return (num_nodes + block_nodes - 1) // block_nodes


def block_range(b: int, num_nodes: int, block_nodes: int) -> tuple[int, int]:
    """Node rows ``[start, end)`` of block ``b``."""
    return b * block_nodes, min((b + 1) * block_nodes, num_nodes)


def shard_blocks(n_blocks: int, num_shards: int, shard_id: int) -> list[int]:
    """Blocks of one shard: every ``num_shards``-th (round robin balances text lengths)."""
    return list(range(shard_id, n_blocks, num_shards))


def disk_bytes(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _ranges(blocks: list[int], num_nodes: int, block_nodes: int) -> list[list[int]]:
    """Sorted blocks -> merged node ranges ``[[start, end), ...]``."""
    out: list[list[int]] = []
    for b in sorted(blocks):
        s, e = block_range(b, num_nodes, block_nodes)
        if out and out[-1][1] == s:
            out[-1][1] = e
        else:
            out.append([s, e])
    return out


MANIFEST_KEYS = ("format", "layers", "num_nodes", "hidden_size", "chunk_nodes", "block_nodes", "num_shards", "storage_dtype")


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
        "batching": BATCHING,
        "package_version": __version__,
        **({"model_tuning": model_tuning} if model_tuning else {}),
    }


def rebuild_hint(path: str | Path, manifest: dict | None = None) -> str:
    """How to rebuild a damaged cache: its exact encode command when the manifest is readable."""
    if manifest is not None:
        try:
            return f"rebuild it with `{completion_command(manifest, path)} --overwrite`"
        except (KeyError, TypeError):
            pass
    return f"rebuild it with `pipeline encode GRAPH --out {path} --overwrite`"


def read_manifest(path: str | Path) -> dict:
    file = Path(path) / MANIFEST_FILE
    if not file.is_file():
        raise InputError(f"{path}: not an encode cache (no manifest.json); create one with `pipeline encode GRAPH --out {path}`")
    if not (Path(path) / "zarr.json").is_file() and ownership.marker_kind(path) != "cache":
        raise InputError(f"{path}: not an encode cache (a manifest.json but no Zarr group, and no cache marker); "
                         f"give a folder written by `pipeline encode GRAPH --out DIR`")
    manifest = guarded.read_json(file, rebuild_hint(path))
    if not str(manifest.get("format", "")).startswith(FORMAT.split("/")[0] + "/"):
        raise InputError(f"{path}: not an encode cache (its manifest.json has no cache format, found {manifest.get('format')!r}); "
                         f"give a folder written by `pipeline encode GRAPH --out DIR`")
    if manifest.get("format") != FORMAT:
        raise InputError(f"{path}: cache format {manifest.get('format')!r}, this version reads {FORMAT!r}; re-encode with --overwrite")
    guarded.require(manifest, MANIFEST_KEYS, file, rebuild_hint(path))
    return manifest


def is_cache(path: Path) -> bool:
    """A cache written before ownership markers: our manifest format AND the Zarr layout."""
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    return (isinstance(manifest, dict) and manifest.get("format") == FORMAT and (path / "zarr.json").is_file()
            and (path / "states" / "zarr.json").is_file())


def claim(path: str | Path, overwrite: bool, inputs=()) -> bool:
    """Check ``--out`` before any work (see :func:`pipeline.core.ownership.claim_output`); True
    when it holds a cache (resumed, or replaced with ``--overwrite`` if its settings differ)."""
    return ownership.claim_output(path, "cache", "--out", overwrite=overwrite, inputs=inputs, resume=True, legacy=is_cache)


def remove_cache(path: str | Path) -> None:
    """Delete the cache at ``path`` (only if it is one this pipeline wrote)."""
    ownership.remove_owned(path, "cache", is_cache)


def completion_command(manifest: dict, path: str | Path, shard: int | None = None) -> str:
    """The exact ``pipeline encode`` command that (re)fills the missing blocks."""
    cmd = (
        f"pipeline encode {manifest['graph_source']} --out {path} --model {manifest['model']} "
        f"--layers {','.join(map(str, manifest['layers']))} --max-length {manifest['max_length']} "
        f"--pooling {manifest['pooling']} --dtype {manifest['compute_dtype']} "
        f"--storage-dtype {manifest['storage_dtype']} --block-size {manifest['block_nodes']}"
    )
    if "batch_tokens" in manifest:  # batching changes the last bits: resume with the same budget
        cmd += f" --batch-tokens {manifest['batch_tokens']}"
    if manifest.get("backend", "hf") != "hf":
        cmd += f" --backend {manifest['backend']}"
    if shard is not None:
        cmd += f" --num-shards {manifest['num_shards']} --shard-id {shard}"
    return cmd


# ---------------------------------------------------------------------------- writer
class CacheWriter:
    """Creates (or reopens, to resume) a cache and commits node blocks atomically."""

    def __init__(self, path: Path, manifest: dict):
        import zarr

        self.path, self.manifest = path, manifest
        with zarr.config.set({"array.write_empty_chunks": True}):  # every chunk on disk: a missing one is damage
            self.states = zarr.open_array(str(path / "states"), mode="r+")
            self.scales = zarr.open_array(str(path / "scales"), mode="r+") if manifest["storage_dtype"] == "int8" else None
        self.n_blocks = num_blocks(manifest["num_nodes"], manifest["block_nodes"])

    @classmethod
    def create_or_open(
        cls, path: str | Path, manifest: dict, node_ids: np.ndarray, config: dict, overwrite: bool = False,
        hashes: np.ndarray | None = None,
    ) -> "CacheWriter":
        """Open ``path`` if it holds a cache with the same identity, else create it.

        ``hashes``: (N, 16) :func:`text_hashes` of the graph's texts, stored for later reuse.
        A cache of another model/graph/settings is refused unless ``overwrite``; a folder that
        is not a cache is never deleted.
        """
        path = Path(path)
        if claim(path, overwrite):
            existing = read_manifest(path)
            diff = identity_diff(existing, manifest)
            if not diff:
                check_node_ids(path, existing)
                return cls(path, existing)
            if not overwrite:
                detail = "; ".join(f"{k}: cache has {existing.get(k)!r}, now {manifest.get(k)!r}" for k in diff[:4])
                raise InputError(
                    f"--out {path}: holds a cache of model {existing.get('model')!r} on graph {existing.get('graph_source')!r} "
                    f"with other settings ({detail}). Pass --overwrite to replace it, or choose another --out"
                )
            ownership.remove_owned(path, "cache", is_cache)
        _create(path, manifest, node_ids, config, hashes)
        return cls(path, read_manifest(path))

    def done_blocks(self) -> set[int]:
        """Blocks that are complete: marked, and every chunk file present at its full size."""
        return _done_blocks(self.path) - set(self.damaged_blocks())

    def damaged_blocks(self) -> dict[int, str]:
        return damaged_blocks(self.path, self.manifest)

    def write_block(self, b: int, values: np.ndarray, node_ids: np.ndarray, seconds: float | None = None,
                    peak_bytes: int | None = None) -> None:
        """Commit block ``b``: ``values`` (n, S, H) float32 -> storage dtype; data, then mark.

        ``seconds``: wall time of the block's encode, kept in its mark so that the one-off
        encode cost adds up across resumes and shards (``finish`` sums it into ``encode_s``).
        ``peak_bytes``: the encoding process's peak memory so far (``finish`` keeps the largest
        over the marks as ``encode_peak_memory_bytes``).

        Non-finite values (fp16 overflow, or the model's own) stop the run naming the node;
        nothing is marked. int8: rows and their scales are written before the mark.
        """
        start, end = block_range(b, self.manifest["num_nodes"], self.manifest["block_nodes"])
        assert values.shape == (end - start, *self.states.shape[1:]), values.shape
        int8 = self.scales is not None
        with np.errstate(over="ignore"):  # overflow is detected (and reported) just below
            stored = values.astype(np.float32 if int8 else self.manifest["storage_dtype"])
        finite = np.isfinite(stored).all(axis=(1, 2))  # (n,)
        if not finite.all():
            i = int(np.flatnonzero(~finite)[0])
            rung = int(np.flatnonzero(~np.isfinite(stored[i]).all(axis=1))[0])
            hint = "rerun with --storage-dtype float32 (and --overwrite)" if self.manifest["storage_dtype"] == "float16" else "the model itself produced them"
            node = node_ids[start + i]
            node = node.item() if hasattr(node, "item") else node  # numpy scalar -> plain repr
            raise PipelineError(
                f"node {node!r}: non-finite value in LLM state {self.manifest['layers'][rung]} "
                f"as {self.manifest['storage_dtype']}; {hint}"
            )
        self._remove_orphan_partials(start, end)
        digest = hashlib.blake2b(digest_size=16)  # of the bytes stored: what content_digest binds a run to
        if int8:
            q, scale = quantize_int8(stored)
            self.states[start:end] = q
            self.scales[start:end] = scale
            digest.update(np.ascontiguousarray(q).data)
            digest.update(np.ascontiguousarray(scale).data)
        else:
            self.states[start:end] = stored
            digest.update(np.ascontiguousarray(stored).data)
        mark = {"nodes": [start, end], "digest": digest.hexdigest(), **({"seconds": float(seconds)} if seconds is not None else {}),
                **({"peak_bytes": int(peak_bytes)} if peak_bytes is not None else {})}
        (self.path / "blocks" / f"{b:06d}.done").write_text(json.dumps(mark) + "\n")

    def _remove_orphan_partials(self, start: int, end: int) -> None:
        """Delete Zarr's temporary chunk files (``<chunk>.<uuid>.partial``) of nodes
        ``start..end``: only this block's shard writes these chunks, so any found before its
        write were left by a writer killed mid-chunk, and would stay in the cache forever."""
        c = int(self.manifest["chunk_nodes"])
        for i in range(start // c, (end - 1) // c + 1):
            for f in (chunk_file(self.path, i), scales_chunk_file(self.path, i)):
                if f.parent.is_dir():
                    for orphan in f.parent.glob(f"{f.name}.*.partial"):
                        orphan.unlink(missing_ok=True)

    def record_self_check(self, record: dict | None) -> None:
        """Keep a resumed run's self-check (stage1_encode/self_check.py) in a manifest that has none
        (a cache created before the check existed); the creating run's record is kept otherwise."""
        m = read_manifest(self.path)
        if record is None or "self_check" in m:
            return
        m["self_check"] = record
        atomic.write_json(self.path / MANIFEST_FILE, m)
        self.manifest = m

    def finish(self) -> bool:
        """Record the completed ranges (and, once complete, the encode time) in the manifest;
        True when every block is done."""
        done = self.done_blocks()
        m = read_manifest(self.path)
        m["completed_ranges"] = _ranges(sorted(done), m["num_nodes"], m["block_nodes"])
        if len(done) == self.n_blocks:
            seconds = encode_seconds(self.path)
            if seconds is not None:
                m["encode_s"] = seconds
            peak = encode_peak_bytes(self.path)
            if peak is not None:
                m["encode_peak_memory_bytes"] = peak
        atomic.write_json(self.path / MANIFEST_FILE, m)
        self.manifest = m
        self.blocks_left = self.n_blocks - len(done)
        return self.blocks_left == 0


def _existing_manifest(path: Path) -> dict | None:
    try:
        return read_manifest(path)
    except InputError:
        return None


def _create(path: Path, manifest: dict, node_ids: np.ndarray, config: dict, hashes: np.ndarray | None = None) -> None:
    import zarr

    from pipeline.core.config_file import save_resolved_config
    from pipeline.core.options import config_file_name

    n, s, h = manifest["num_nodes"], len(manifest["layers"]), manifest["hidden_size"]
    tmp = atomic.temp_sibling(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zarr.config.set({"array.write_empty_chunks": True}):  # every chunk on disk, zeros included
            group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
            group.create_array(
                "states", shape=(n, s, h), chunks=(manifest["chunk_nodes"], s, h),
                dtype=manifest["storage_dtype"], compressors=None, fill_value=0,  # states do not compress (docs/design.md)
            )
            if manifest["storage_dtype"] == "int8":
                group.create_array(
                    "scales", shape=(n, s), chunks=(manifest["chunk_nodes"], s), dtype="float32", compressors=None, fill_value=0,
                )
            ids = np.asarray(node_ids)
            if ids.dtype.kind in "iu":
                group.create_array("node_ids", data=ids.astype(np.int64), chunks=(max(n, 1),), compressors=None)
            else:
                arr = group.create_array("node_ids", shape=(n,), dtype=str, chunks=(max(n, 1),))
                arr[:] = np.asarray([str(v) for v in ids], dtype=object)
            if hashes is not None:
                group.create_array(
                    "text_hashes", data=np.asarray(hashes, dtype=np.uint8), chunks=(max(min(n, 1 << 16), 1), TEXT_HASH_BYTES), compressors=None
                )
        (tmp / "blocks").mkdir()
        atomic.write_json(tmp / MANIFEST_FILE, {**manifest, "completed_ranges": []})
        save_resolved_config(tmp / config_file_name("encode"), config)
        ownership.write_marker(tmp, "cache")
        atomic.fsync_tree(tmp)
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        try:
            atomic.move_into_place(tmp, path)  # never over an existing cache: first creator wins
        except OSError as err:  # another shard created it first: use theirs if it is the same cache
            existing = _existing_manifest(path)
            if not existing or identity_diff(existing, manifest):
                raise PipelineError(f"--out {path}: another process created a different cache there at the same time") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def marked_blocks(path: str | Path) -> set[int]:
    """Blocks with a completion mark (complete unless ``damaged_blocks`` names them)."""
    return _done_blocks(Path(path))


def _done_blocks(path: Path) -> set[int]:
    """Blocks with a completion mark (their chunk files are checked by ``damaged_blocks``)."""
    out = set()
    for p in (path / "blocks").glob("*.done"):
        try:
            out.add(int(p.stem))
        except ValueError:
            pass  # not a mark of ours
    return out


def check_node_ids(path: str | Path, manifest: dict) -> None:
    """Refuse a cache whose node id chunk is gone (Zarr would read it as zeros or empty strings)."""
    if int(manifest["num_nodes"]) > 0 and (Path(path) / "node_ids" / "zarr.json").is_file():
        f = Path(path) / "node_ids" / "c" / "0"
        if not f.is_file():
            raise guarded.damaged(f, f"node id chunk of cache {path} is missing", rebuild_hint(path, manifest))


def chunk_bytes(manifest: dict) -> int:
    """Size of every chunk file (edge chunks are stored full size): chunk_nodes x S x H x itemsize."""
    itemsize = np.dtype(manifest["storage_dtype"]).itemsize
    return int(manifest["chunk_nodes"]) * len(manifest["layers"]) * int(manifest["hidden_size"]) * itemsize


def chunk_file(path: str | Path, i: int) -> Path:
    return Path(path) / "states" / "c" / str(i) / "0" / "0"


def scales_chunk_file(path: str | Path, i: int) -> Path:
    """int8 caches: the float32 scales (chunk_nodes, S) of chunk ``i``, raw bytes."""
    return Path(path) / "scales" / "c" / str(i) / "0"


def damaged_blocks(path: str | Path, manifest: dict, blocks: set[int] | None = None) -> dict[int, str]:
    """Marked blocks (or ``blocks``) whose chunk files are missing or not of full size -> what is
    wrong with the first such file. Only the raw layout this module writes is checked."""
    path = Path(path)
    if not _raw_chunk_files(path / "states"):
        return {}
    n, bn, c = int(manifest["num_nodes"]), int(manifest["block_nodes"]), int(manifest["chunk_nodes"])
    files = [(chunk_file, chunk_bytes(manifest))]
    if manifest["storage_dtype"] == "int8":
        files.append((scales_chunk_file, c * len(manifest["layers"]) * 4))
    out = {}
    for b in sorted(_done_blocks(path) if blocks is None else blocks):
        start, end = block_range(b, n, bn)
        for i in range(start // c, (end - 1) // c + 1 if end > start else start // c):
            for name, size in files:
                f = name(path, i)
                try:
                    got = f.stat().st_size
                except OSError:
                    out[b] = f"chunk file {f} is missing"
                    break
                if got != size:
                    out[b] = f"chunk file {f} has {got} bytes, expected {size} (truncated)"
                    break
            if b in out:
                break
    return out


def content_digest(path: str | Path, manifest: dict) -> str:
    """BLAKE2b-128 (hex) of what a reader gets from the cache: its identity settings, node ids
    and every block mark with the digest of the bytes that block stored (written by
    ``write_block``). Equal digests mean equal states, so a run can tell that the cache at its
    path is still the one it read; reading the marks costs one small file per block. Caches
    written before block digests are bound by settings, node ids and completed blocks only."""
    path = Path(path)
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({k: manifest.get(k, IDENTITY_DEFAULTS.get(k)) for k in (*IDENTITY_KEYS, "model")}, sort_keys=True).encode())
    ids = path / "node_ids" / "c" / "0"
    h.update(ids.read_bytes() if ids.is_file() else b"")
    for b in sorted(_done_blocks(path)):
        try:
            mark = json.loads((path / "blocks" / f"{b:06d}.done").read_text())
        except (OSError, ValueError):
            mark = None  # gone or rewritten while read: it counts as a change
        h.update(json.dumps([b, mark.get("nodes"), mark.get("digest")] if isinstance(mark, dict) else [b, None]).encode())
    return h.hexdigest()


def encode_seconds(path: str | Path) -> float | None:
    """Total encode wall time of a cache: the sum of its block marks' seconds (all shards and
    resumes; model loading excluded). None when a mark lacks them (caches written before
    encode time was recorded): unknown, never 0."""
    total = 0.0
    for mark in (Path(path) / "blocks").glob("*.done"):
        try:
            seconds = json.loads(mark.read_text()).get("seconds")
        except (OSError, ValueError):
            return None
        if not isinstance(seconds, (int, float)):
            return None
        total += float(seconds)
    return total


def encode_peak_bytes(path: str | Path) -> int | None:
    """The largest peak memory of the processes that encoded a cache (all shards and resumes;
    LLM loading included): the largest ``peak_bytes`` of its block marks. None when a mark
    lacks it (blocks written by an encode that did not record it): unknown, never 0."""
    peak = 0
    for mark in (Path(path) / "blocks").glob("*.done"):
        try:
            value = json.loads(mark.read_text()).get("peak_bytes")
        except (OSError, ValueError):
            return None
        if not isinstance(value, int):
            return None
        peak = max(peak, value)
    return peak


# ---------------------------------------------------------------------------- reader
def _open_files_allowed() -> int:
    """Chunk files a reader may keep open: half the process's soft fd limit, within [64, MAX_OPEN_CHUNKS].
    Out-of-core training reads neighbour rows from anywhere, so reopening files would cost more than the reads."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 512
    soft = MAX_OPEN_CHUNKS if soft == resource.RLIM_INFINITY else soft
    return max(64, min(MAX_OPEN_CHUNKS, soft // 2))


class CacheReader:
    """Read access to a cache. ``layers``: LLM state index of each rung (S,).

    ``read(nodes, rungs)`` -> (n, S', H) in ``dtype``; ``nodes`` are dense graph indices
    (rows), ``rungs`` positions in ``layers``; None means all. ``dtype`` is the storage dtype,
    or float32 for an int8 cache: every read dequantizes its rows with their scales.
    """

    def __init__(self, path: str | Path):
        import zarr

        self.path = Path(path)
        self.manifest = m = read_manifest(self.path)
        try:
            group = zarr.open_group(str(self.path), mode="r")
            self._states = group["states"]
            self.node_ids = np.asarray(group["node_ids"][:])
            self._group = group
        except Exception as err:  # zarr raises many types for damaged metadata or a missing array
            raise guarded.damaged(self.path, f"the Zarr arrays cannot be read ({type(err).__name__}: {err})", rebuild_hint(self.path, m)) from None
        check_node_ids(self.path, m)
        want = (m["num_nodes"], len(m["layers"]), m["hidden_size"])
        if tuple(self._states.shape) != want or self.node_ids.shape != (m["num_nodes"],):
            raise guarded.damaged(
                self.path, f"states {tuple(self._states.shape)} and node_ids {self.node_ids.shape} do not match manifest.json "
                f"(N, S, H) = {want}", rebuild_hint(self.path, m))
        self.storage_dtype: str = m["storage_dtype"]
        self.dtype = value_dtype(self.storage_dtype)  # what reads return
        self._scales_array = None
        if self.storage_dtype == "int8":
            try:
                self._scales_array = group["scales"]
            except Exception:  # KeyError, or zarr's own errors for damaged metadata
                raise guarded.damaged(self.path, "an int8 cache without its scales array", rebuild_hint(self.path, m)) from None
            if tuple(self._scales_array.shape) != want[:2]:
                raise guarded.damaged(self.path, f"scales {tuple(self._scales_array.shape)} do not match (N, S) = {want[:2]}",
                                      rebuild_hint(self.path, m))
        self._scales: np.ndarray | None = None  # (N, S) float32, read whole on first use
        self.layers: list[int] = list(self.manifest["layers"])
        self.num_nodes: int = self.manifest["num_nodes"]
        self.hidden_size: int = self.manifest["hidden_size"]
        self.chunk_nodes: int = int(self._states.chunks[0])
        self._all: np.ndarray | None = None
        self._raw = _raw_chunk_files(self.path / "states")
        self._fds: dict[int, int] = {}  # chunk -> open file (row reads), bounded by _max_fds
        self._max_fds = _open_files_allowed()
        self._chunk_prefix = str(self.path / "states" / "c") + os.sep
        self._fd_lock = threading.Lock()

    def text_hashes(self) -> np.ndarray | None:
        """(N, 16) uint8 hashes of the texts the rows were encoded from; None in older caches."""
        if "text_hashes" not in self._group:
            return None
        return np.asarray(self._group["text_hashes"][:])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self._states.shape)

    def damaged_blocks(self) -> dict[int, str]:
        """Marked blocks whose chunk files are missing or truncated -> the first such file."""
        return damaged_blocks(self.path, self.manifest)

    def rungs_nbytes(self, num_rungs: int) -> int:
        """Bytes that ``num_rungs`` rungs of every node take in memory, as read (int8 dequantized to float32)."""
        return self.num_nodes * num_rungs * self.hidden_size * self.dtype.itemsize

    @property
    def num_blocks(self) -> int:
        return num_blocks(self.num_nodes, self.manifest["block_nodes"])

    def missing_blocks(self) -> list[int]:
        """Blocks not complete: without a mark, or marked with a missing or truncated chunk file."""
        done = _done_blocks(self.path) - set(self.damaged_blocks())
        return [b for b in range(num_blocks(self.num_nodes, self.manifest["block_nodes"])) if b not in done]

    def check_complete(self) -> None:
        """InputError naming the missing (or damaged) blocks/shards and the command that completes them."""
        missing = self.missing_blocks()
        if not missing:
            return
        m = self.manifest
        ranges = ", ".join(f"{s}-{e - 1}" for s, e in _ranges(missing, self.num_nodes, m["block_nodes"])[:5])
        shards = sorted({b % m["num_shards"] for b in missing})
        damaged = self.damaged_blocks()
        msg = f"cache {self.path} is incomplete: {len(missing)} of {num_blocks(self.num_nodes, m['block_nodes'])} blocks missing (nodes {ranges})"
        if damaged:
            b = min(damaged)
            msg += f", {len(damaged)} of them damaged (block {b}: {damaged[b]})"
        if m["num_shards"] > 1:
            msg += f"; missing shard(s) {', '.join(map(str, shards))} of {m['num_shards']}: " + " ; ".join(
                f"`{completion_command(m, self.path, s)}`" for s in shards
            )
        else:
            msg += f"; complete it with `{completion_command(m, self.path)}`"
        raise InputError(msg)

    def check_graph(self, graph) -> None:
        """Refuse a cache built from another graph (fingerprints differ)."""
        if graph.fingerprint != self.manifest["graph_fingerprint"]:
            was = f"(fingerprint {self.manifest['graph_fingerprint'][:12]})"
            if self.manifest["graph_source"] == graph.source:  # same name, other content (or an older fingerprint scheme)
                why = (f"graph {graph.source!r} {was} changed since cache {self.path} was built (now "
                       f"{graph.fingerprint[:12]}), or the cache predates graph fingerprint v{FINGERPRINT_VERSION}")
            else:
                why = (f"cache {self.path} was built from graph {self.manifest['graph_source']!r} {was}, "
                       f"not from {graph.source!r} ({graph.fingerprint[:12]})")
            raise InputError(f"{why}; re-encode with `pipeline encode {graph.source} --out NEW_DIR`")

    def scales(self) -> np.ndarray:
        """(N, S) float32 scales of an int8 cache (4 bytes a rung and node; read once)."""
        if self._scales is None:
            self._scales = np.asarray(self._scales_array[:], dtype=np.float32)
        return self._scales

    def _dequantized(self, stored: np.ndarray, nodes: np.ndarray | slice, rsel) -> np.ndarray:
        """Stored rows (n, S', H) of ``nodes`` at rungs ``rsel`` -> values in ``dtype``."""
        if self._scales_array is None:
            return stored
        return dequantize_int8(stored, self.scales()[nodes][:, rsel])

    def _fits_in_memory(self) -> bool:
        return int(np.prod(self.shape)) * self.dtype.itemsize <= memory_budget()  # as read: int8 dequantized

    def read(self, nodes: np.ndarray | None = None, rungs: list[int] | None = None) -> np.ndarray:
        """(n, S', H) states of ``nodes`` (dense indices) at ``rungs``; whole-chunk reads only."""
        if rungs is not None and list(rungs) == list(range(self.shape[1])):
            rungs = None  # every rung in order: no copy
        rsel = slice(None) if rungs is None else np.asarray(rungs, dtype=np.int64)
        if self._all is None and self._fits_in_memory():
            # One sequential read of the whole array beats scattered chunk reads, and later
            # calls (every training epoch) are then free.
            self._all = self._read_all()
            self._all.flags.writeable = False
        if self._all is not None:
            x = self._all if nodes is None else self._all[np.asarray(nodes, dtype=np.int64)]
            return x if rungs is None else x[:, rsel]
        if nodes is None:
            return self._read_all(rsel)
        return self.read_rows(nodes, rungs)

    # Fast paths. An uncompressed array on a local disk stores chunk i as the raw C-order bytes
    # of rows [i*c, (i+1)*c) in ``states/c/i/0/0``: reading that file directly costs ~0.07 ms
    # for a 160 KB chunk against ~1.5 ms through zarr's async machinery, and one row (S x H
    # values, contiguous in its chunk) is one ``pread`` of ~5 us. Other layouts go through zarr.
    def read_all(self, rungs: list[int] | None = None) -> np.ndarray:
        """(N, S', H) states of every node at ``rungs``: whole chunks in order; nothing is kept
        (peak memory = the result plus one chunk)."""
        if self._all is not None:
            return self._all if rungs is None else self._all[:, np.asarray(rungs, dtype=np.int64)]
        return self._read_all(slice(None) if rungs is None else np.asarray(rungs, dtype=np.int64))

    def _read_all(self, rsel=slice(None)) -> np.ndarray:
        """(N, S', H): every chunk in order, keeping only the rungs ``rsel``."""
        if not self._raw:
            x = self._states[:]
            return self._dequantized(x if isinstance(rsel, slice) else x[:, rsel], slice(None), rsel)
        s = self.shape[1] if isinstance(rsel, slice) else len(rsel)
        out = np.empty((self.num_nodes, s, self.hidden_size), dtype=self.dtype)
        c = self.chunk_nodes
        for i in range(num_blocks(self.num_nodes, c)):
            out[i * c : (i + 1) * c] = self.read_chunk(i)[:, rsel]
        return out

    def read_chunk(self, i: int) -> np.ndarray:
        """Chunk ``i``: (c', S, H) rows ``[i*c, min((i+1)*c, N))``, all rungs, in one read."""
        out = np.empty((self.chunk_nodes, *self.shape[1:]), dtype=self.dtype)  # edge chunks are stored full size
        return out[: self.read_chunk_into(i, out)]

    def read_chunk_into(self, i: int, out: np.ndarray) -> int:
        """Chunk ``i`` (all rungs) into ``out`` (c, S, H) of ``dtype``, C-contiguous, without
        allocating on the raw layout of a float cache; returns its valid row count c' (the last
        chunk's rows beyond it are undefined). int8: read into a scratch, dequantized into ``out``."""
        if self._scales_array is None:
            return self._read_chunk_stored(i, out)
        stored = np.empty(out.shape, dtype=np.int8)
        rows = self._read_chunk_stored(i, stored)
        c = self.chunk_nodes
        dequantize_int8(stored[:rows], self.scales()[i * c : i * c + rows], out=out[:rows])
        return rows

    def _chunk_stored(self, i: int) -> np.ndarray:
        """Chunk ``i`` as stored (c', S, H)."""
        out = np.empty((self.chunk_nodes, *self.shape[1:]), dtype=self._states.dtype)
        return out[: self._read_chunk_stored(i, out)]

    def _read_chunk_stored(self, i: int, out: np.ndarray) -> int:
        """Chunk ``i`` as stored into ``out`` (c, S, H) of the storage dtype; its valid row count."""
        c = self.chunk_nodes
        rows = min(c, self.num_nodes - i * c)
        if not self._raw:
            out[:rows] = self._states[i * c : i * c + rows]
            return rows
        try:
            with open(self._chunk_file(i), "rb", buffering=0) as f:
                got = f.readinto(memoryview(out).cast("B"))
        except FileNotFoundError:  # every chunk is written: a missing one is damage, never zeros
            raise self._damaged_chunk(i, "is missing") from None
        if got != out.nbytes:
            raise self._damaged_chunk(i, f"has {got} bytes, expected {out.nbytes} (truncated)")
        return rows

    def _damaged_chunk(self, i: int, problem: str) -> InputError:
        try:
            fix = f"repair it with `{completion_command(self.manifest, self.path)}` (re-encodes the damaged blocks)"
        except KeyError:
            fix = rebuild_hint(self.path)
        return guarded.damaged(self._chunk_file(i), f"chunk file of cache {self.path} {problem}", fix)

    def _chunk_file(self, i: int) -> str:
        return f"{self._chunk_prefix}{i}{os.sep}0{os.sep}0"  # a string: Path joins cost more than the read

    def _chunk_fd(self, i: int) -> int | None:
        with self._fd_lock:
            fd = self._fds.get(i)
            if fd is None:
                try:
                    fd = os.open(self._chunk_file(i), os.O_RDONLY)
                except FileNotFoundError:
                    raise self._damaged_chunk(i, "is missing") from None
                if len(self._fds) >= self._max_fds:  # drop the oldest opened
                    os.close(self._fds.pop(next(iter(self._fds))))
                self._fds[i] = fd
            return fd

    def close(self) -> None:
        with self._fd_lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def read_rows(self, nodes: np.ndarray, rungs: list[int] | None = None) -> np.ndarray:
        """(n, S', H) states of ``nodes`` read chunk by chunk, never the whole array (even when
        it would fit): what one rank of a distributed run reads for its share of the nodes, and
        what out-of-core training reads for scattered neighbours. On the raw layout a chunk
        holding at least ``DENSE_CHUNK_ROWS`` of the rows is read whole, and each row of a
        sparser chunk with one ``pread``; other layouts read runs of chunks through zarr."""
        if rungs is not None and list(rungs) == list(range(self.shape[1])):
            rungs = None  # every rung in order: rows land straight in the output
        rsel = slice(None) if rungs is None else np.asarray(rungs, dtype=np.int64)
        nodes = np.asarray(nodes, dtype=np.int64)
        return self._dequantized(self._read_rows_stored(nodes, rungs, rsel), nodes, rsel)

    def _read_rows_stored(self, nodes: np.ndarray, rungs: list[int] | None, rsel) -> np.ndarray:
        """``read_rows`` in the storage dtype."""
        s = len(self.layers) if rungs is None else len(rsel)
        if len(nodes) == 0:
            return np.empty((0, s, self.hidden_size), self._states.dtype)
        if not self._raw:
            return self._read_by_chunk(nodes, rsel)
        out = np.empty((len(nodes), s, self.hidden_size), dtype=self._states.dtype)  # (n, S', H)
        row = np.empty(self.shape[1:], dtype=self._states.dtype)  # (S, H): one row as stored
        c, row_bytes = self.chunk_nodes, row.nbytes
        order = np.argsort(nodes // c, kind="stable")
        chunks, starts, counts = np.unique(nodes[order] // c, return_index=True, return_counts=True)
        offsets = (nodes % c * row_bytes).tolist()
        for ch, a, k in zip(chunks.tolist(), starts.tolist(), counts.tolist()):
            sel = order[a : a + k]
            if k >= DENSE_CHUNK_ROWS:
                out[sel] = self._chunk_stored(ch)[nodes[sel] - ch * c][:, rsel]
                continue
            fd = self._chunk_fd(ch)
            for j in sel.tolist():
                target = out[j] if rungs is None else row
                got = os.preadv(fd, [target], offsets[j])
                if got != row_bytes:
                    raise self._damaged_chunk(ch, f"ends before node row {nodes[j]} (truncated)")
                if rungs is not None:
                    out[j] = row[rsel]
        return out

    def _read_by_chunk(self, nodes: np.ndarray, rsel) -> np.ndarray:
        """Too big for memory: read each needed chunk once, in chunk order (runs of chunks)."""
        c = self.manifest["chunk_nodes"]
        s = len(self.layers) if isinstance(rsel, slice) else len(rsel)
        out = np.empty((len(nodes), s, self.hidden_size), dtype=self._states.dtype)
        chunk_of = nodes // c
        order = np.argsort(chunk_of, kind="stable")
        chunks = np.unique(chunk_of)
        runs = np.split(chunks, np.flatnonzero(np.diff(chunks) != 1) + 1)  # consecutive chunk runs
        for run in runs:
            lo, hi = int(run[0]) * c, min((int(run[-1]) + 1) * c, self.num_nodes)
            block = self._states[lo:hi][:, rsel]
            sel = order[(chunk_of[order] >= run[0]) & (chunk_of[order] <= run[-1])]
            out[sel] = block[nodes[sel] - lo]
        return out


def _raw_chunk_files(array_dir: Path) -> bool:
    """True when the array's chunk files are raw little-endian C-order bytes at ``c/i/0/0``."""
    try:
        meta = json.loads((array_dir / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    codecs = meta.get("codecs", [])
    return (
        sys.byteorder == "little"
        and len(meta.get("shape", [])) == 3
        and len(codecs) == 1 and codecs[0].get("name") == "bytes"
        and codecs[0].get("configuration", {}).get("endian", "little") == "little"
        and meta.get("chunk_key_encoding") == {"name": "default", "configuration": {"separator": "/"}}
        and not meta.get("storage_transformers")
        and meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape", [0])[1:] == meta["shape"][1:]
    )


def open_cache(path: str | Path) -> CacheReader:
    """Open a cache for reading (does not check completeness: call ``check_complete``)."""
    return CacheReader(path)


def status_text(path: str | Path) -> tuple[str, bool]:
    """Human summary of a cache's completion for ``pipeline encode --status``; (text, complete)."""
    reader = open_cache(path)
    m = reader.manifest
    total = num_blocks(reader.num_nodes, m["block_nodes"])
    missing = reader.missing_blocks()
    lines = [
        f"cache {reader.path}",
        f"  model {m.get('model')} ({str(m.get('weights_sha256'))[:12]}), graph {m.get('graph_source')}, {reader.num_nodes} nodes",
        f"  layers {m['layers']}, pooling {m.get('pooling')}, max length {m.get('max_length')}, {m.get('compute_dtype')} -> {m['storage_dtype']}",
        f"  blocks done {total - len(missing)}/{total} ({m['block_nodes']} nodes each), {disk_bytes(path) / 1e6:.1f} MB on disk",
    ]
    damaged = reader.damaged_blocks()
    for b in sorted(damaged)[:5]:
        lines.append(f"  damaged block {b}: {damaged[b]}")
    if len(damaged) > 5:
        lines.append(f"  ... {len(damaged) - 5} more damaged block(s)")
    if missing:
        try:
            reader.check_complete()
        except InputError as err:
            lines.append("  " + err.message)
    else:
        lines.append("  complete")
    return "\n".join(lines), not missing
