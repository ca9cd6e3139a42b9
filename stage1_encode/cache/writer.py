"""The cache writer: creates (or reopens, to resume) a cache and commits node blocks.

The cache folder is created in a temp folder and renamed, so concurrent shards agree on one
creator. A block's data is written first and its mark after (stage1_encode/cache/blocks.py).
A run killed at any moment redoes only incomplete blocks and, as each block's computation
depends only on its own texts, ends with the same bytes as an uninterrupted run. Disjoint
blocks touch disjoint chunks, so writers need no locks.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np

from pipeline.core import atomic, ownership
from pipeline.core.errors import InputError, PipelineError
from stage1_encode.cache.blocks import check_node_ids, damaged_blocks, encode_peak_bytes, encode_seconds, marked_blocks, write_mark
from stage1_encode.cache.geometry import block_range, chunk_file, node_ranges, num_blocks, scales_chunk_file
from stage1_encode.cache.manifest import MANIFEST_FILE, TEXT_HASH_BYTES, claim, identity_diff, read_manifest
from stage1_encode.cache.quantize import quantize_int8


class CacheWriter:
    """Creates (or reopens, to resume) a cache and commits node blocks atomically."""

    def __init__(self, path: Path, manifest: dict):
        import zarr

        self.path, self.manifest = path, manifest
        atomic.remove_stale_temps_in(path / "blocks")  # the half-written marks of killed writers on this host
        with zarr.config.set({"array.write_empty_chunks": True}):  # every chunk on disk: a missing one is damage
            self.states = zarr.open_array(str(path / "states"), mode="r+")
            self.scales = zarr.open_array(str(path / "scales"), mode="r+") if manifest["storage_dtype"] == "int8" else None
        self.n_blocks = num_blocks(manifest["num_nodes"], manifest["block_nodes"])

    @classmethod
    def create_or_open(
        cls, path: str | Path, manifest: dict, node_ids: np.ndarray, config: dict, hashes: np.ndarray, overwrite: bool = False,
    ) -> "CacheWriter":
        """Open ``path`` if it holds a cache with the same identity, else create it.

        ``hashes``: (N, 16) :func:`~stage1_encode.cache.manifest.text_hashes` of the graph's
        texts, stored for ``--reuse``. A cache of another model/graph/settings is refused
        unless ``overwrite``; a folder that is not a cache is never deleted.
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
                    f"--out {path}: holds a cache of model {existing['model']!r} on graph {existing['graph_source']!r} "
                    f"with other settings ({detail}). Pass --overwrite to replace it, or choose another --out"
                )
            ownership.remove_owned(path, "cache")
        _create(path, manifest, node_ids, config, hashes)
        return cls(path, read_manifest(path))

    def done_blocks(self) -> set[int]:
        """Blocks that are complete: marked, and every chunk file present at its full size."""
        return marked_blocks(self.path) - set(self.damaged_blocks())

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
        write_mark(self.path, b, (start, end), digest.hexdigest(), seconds, peak_bytes)

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
        """Keep a resumed run's self-check (stage1_encode/self_check.py) in a manifest that has
        none (one created by a run that did not load the model); an existing record is kept."""
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
        m["completed_ranges"] = node_ranges(done, m["num_nodes"], m["block_nodes"])
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


def _create(path: Path, manifest: dict, node_ids: np.ndarray, config: dict, hashes: np.ndarray) -> None:
    """Write the empty cache (arrays, manifest, saved config, marker) in a temp folder and
    rename it into place; a concurrent creator of the same cache wins, of another is refused."""
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
