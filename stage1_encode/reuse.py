"""Incremental encode, ``pipeline encode GRAPH --out NEW --reuse OLD``: which rows are copied.

A node's row is copied from OLD when OLD holds the same node id with the same text (the
per-node text hashes every cache stores) in a completed block, and OLD was encoded with the
same settings (``REUSE_FLAGS``; anything else is refused, naming the flag). Every other node
(new, edited, or in an unfinished block of OLD) runs through the LLM; nodes of OLD absent
from GRAPH are dropped. OLD is only read.

Why a copied row stands for a fresh one: encode batches only texts of equal token count
(``stage1_encode/run.py``), so a row depends on its own text and, in its last bits, on the
size of its batch (a BLAS kernel's summation order follows the matrix shape; seen on AVX2
CPUs, and GPUs pick kernels by shape too): a fresh row equals the copied one to one storage
step. Copied rows are the old cache's bytes.

Shapes: N nodes of the new graph, N' rows of OLD.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.errors import InputError
from stage1_encode.cache.geometry import block_range, num_blocks
from stage1_encode.cache.manifest import TEXT_HASH_BYTES
from stage1_encode.cache.reader import CacheReader, open_cache

# manifest key -> the flag that sets it: what OLD and the new cache must share
REUSE_FLAGS = {
    "weights_sha256": "--model",
    "tokenizer": "--model",
    "hidden_size": "--model",
    "layers": "--layers",
    "max_length": "--max-length",
    "pooling": "--pooling",
    "compute_dtype": "--dtype",
    "storage_dtype": "--storage-dtype",
    "batch_tokens": "--batch-tokens",
    "backend": "--backend",
}


KINDS = ("reused", "new", "edited", "unfinished")  # what ReusePlan.kind codes 0..3 mean


@dataclass
class ReusePlan:
    """Per node of the new graph: ``source`` (N,) int64 row of OLD to copy, -1 = run the LLM;
    ``kind`` (N,) int8 index into ``KINDS`` (unfinished: same id and text in a block OLD never finished)."""

    reader: CacheReader
    source: np.ndarray
    kind: np.ndarray
    dropped: int  # ids of OLD absent from the new graph
    unfinished: bool = False  # OLD has unfinished (or damaged) blocks: their chunks are never read

    def copy_rows(self, rows: np.ndarray) -> np.ndarray:
        """(n, S, H) float32 rows of OLD (rows of its complete blocks only). An unfinished OLD
        is read row by row, so that a missing or truncated chunk of a block it never finished
        is not read; a complete one whole, once (faster for many rows)."""
        return self.reader.read_rows(rows) if self.unfinished else self.reader.read(rows)

    def counts(self, rows: np.ndarray | slice = slice(None)) -> dict[str, int]:
        """Nodes of each kind among ``rows`` (default: all)."""
        per_kind = np.bincount(self.kind[rows], minlength=len(KINDS))
        return {name: int(c) for name, c in zip(KINDS, per_kind)}

    def describe(self) -> str:
        c = self.counts()
        return (
            f"reuse {self.reader.path}: {c['reused']} rows to copy, {c['new']} new, {c['edited']} edited"
            + (f", {c['unfinished']} in blocks it never finished" if c["unfinished"] else "")
            + f", {self.dropped} dropped"
        )


def match_rows(old_ids: np.ndarray, new_ids: np.ndarray) -> np.ndarray:
    """(N,) int64: the row of each new id in ``old_ids``, -1 when absent (ids unique in both)."""
    old_ids, new_ids = np.asarray(old_ids), np.asarray(new_ids)
    out = np.full(len(new_ids), -1, dtype=np.int64)
    if len(old_ids) == 0 or len(new_ids) == 0 or (old_ids.dtype.kind in "iu") != (new_ids.dtype.kind in "iu"):
        return out  # int ids never equal string ids
    if old_ids.dtype.kind not in "iu":
        old_ids, new_ids = old_ids.astype(str), new_ids.astype(str)
    order = np.argsort(old_ids, kind="stable")
    pos = np.searchsorted(old_ids[order], new_ids).clip(max=len(old_ids) - 1)
    hit = old_ids[order][pos] == new_ids
    out[hit] = order[pos[hit]]
    return out


def check_settings(old: dict, manifest: dict, path: Path) -> None:
    """Refuse OLD when any setting that changes a row differs; every difference is named."""
    problems = []
    for key, flag in REUSE_FLAGS.items():
        was, now = old[key], manifest[key]
        if was != now:
            shown = f"{old.get('model')!r} ({str(was)[:12]}...)" if key in ("weights_sha256", "tokenizer") else repr(was)
            now_shown = f"{manifest.get('model')!r} ({str(now)[:12]}...)" if key in ("weights_sha256", "tokenizer") else repr(now)
            problems.append(f"{flag}: {path} has {key} {shown}, this run {now_shown}")
    if problems:
        raise InputError(
            f"--reuse {path}: encoded with other settings, its rows would differ from this encode's: "
            + "; ".join(dict.fromkeys(problems))
            + ". Give the old cache's settings, or encode without --reuse"
        )


def plan_reuse(old_path: Path, out: Path, manifest: dict, node_ids: np.ndarray, hashes: np.ndarray) -> ReusePlan:
    """Check OLD against this encode (``manifest``) and match its rows to the new graph's nodes.

    ``hashes`` (N, 16): :func:`stage1_encode.cache.manifest.text_hashes` of the new graph's texts.
    """
    old_path = Path(old_path)
    if not old_path.is_dir():
        raise InputError(f"--reuse {old_path}: no such cache folder")
    if old_path.resolve() == Path(out).resolve():
        raise InputError(f"--reuse {old_path}: is the --out cache itself; write the new version to another --out (the old cache is only read)")
    try:
        reader = open_cache(old_path)
    except InputError as err:
        raise InputError(f"--reuse {err.message}") from err
    try:
        old_hashes = reader.text_hashes()
    except InputError as err:
        raise InputError(f"--reuse {err.message}") from err
    check_settings(reader.manifest, manifest, old_path)
    if old_hashes.shape != (reader.num_nodes, TEXT_HASH_BYTES) or len(reader.node_ids) != reader.num_nodes:
        raise InputError(f"--reuse {old_path}: damaged cache (text_hashes or node_ids do not match its {reader.num_nodes} nodes); encode without --reuse")

    rows = match_rows(reader.node_ids, node_ids)
    known = rows >= 0
    same_text = np.zeros(len(rows), dtype=bool)
    same_text[known] = (old_hashes[rows[known]] == hashes[known]).all(axis=1)
    done = np.zeros(reader.num_nodes, dtype=bool)
    block = reader.manifest["block_nodes"]
    missing = set(reader.missing_blocks())
    for b in set(range(num_blocks(reader.num_nodes, block))) - missing:
        lo, hi = block_range(b, reader.num_nodes, block)
        done[lo:hi] = True
    usable = same_text.copy()
    usable[known] &= done[rows[known]]
    kept = np.zeros(reader.num_nodes, dtype=bool)
    kept[rows[known]] = True
    kind = np.full(len(rows), KINDS.index("new"), dtype=np.int8)
    kind[known & ~same_text] = KINDS.index("edited")
    kind[same_text & ~usable] = KINDS.index("unfinished")
    kind[usable] = KINDS.index("reused")
    return ReusePlan(reader=reader, source=np.where(usable, rows, -1), kind=kind, dropped=int((~kept).sum()), unfinished=bool(missing))
