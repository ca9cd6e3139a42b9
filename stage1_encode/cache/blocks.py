"""Block marks and what they prove: completion, damage, the content digest, encode cost.

A block's data is written first and its mark ``blocks/000012.done`` after. The mark is JSON:
``format_version`` (1), ``nodes`` (its node range), ``digest`` (BLAKE2b-128 of the bytes it
stored), and, when the encode timed it, ``seconds`` and ``peak_bytes``. A block is complete
when it has its mark AND each of its chunk files exists with its full size (every chunk is
written, zeros included), so a chunk lost or truncated later is found (``damaged_blocks``):
``encode`` re-encodes those blocks, ``--status`` lists them and readers refuse them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline.core import atomic, guarded
from stage1_encode.cache.geometry import block_range, chunk_bytes, chunk_file, scales_chunk_file
from pipeline.core.format_version import FORMAT_VERSION
from stage1_encode.cache.manifest import IDENTITY_KEYS, check_cache_version, rebuild_hint
from stage1_encode.cache.raw import is_raw_layout


def mark_file(path: str | Path, b: int) -> Path:
    return Path(path) / "blocks" / f"{b:06d}.done"


def write_mark(path: str | Path, b: int, nodes: tuple[int, int], digest: str, seconds: float | None = None,
               peak_bytes: int | None = None) -> None:
    """Mark block ``b`` complete (after its data is written)."""
    mark = {"format_version": FORMAT_VERSION, "nodes": [int(nodes[0]), int(nodes[1])], "digest": digest,
            **({"seconds": float(seconds)} if seconds is not None else {}),
            **({"peak_bytes": int(peak_bytes)} if peak_bytes is not None else {})}
    atomic.write_text(mark_file(path, b), json.dumps(mark) + "\n")  # a mark exists whole or not at all


def marked_blocks(path: str | Path) -> set[int]:
    """Blocks with a completion mark (complete unless ``damaged_blocks`` names them)."""
    out = set()
    for p in (Path(path) / "blocks").glob("*.done"):
        try:
            out.add(int(p.stem))
        except ValueError:
            pass  # not a mark of ours
    return out


def _marks(path: str | Path):
    """(block, mark) of every marked block in order; mark None when its file is gone or
    half-written while read. A mark of another format version is refused (InputError)."""
    for b in sorted(marked_blocks(path)):
        f = mark_file(path, b)
        try:
            mark = json.loads(f.read_text())
        except (OSError, ValueError):
            yield b, None
            continue
        if not isinstance(mark, dict):
            yield b, None
            continue
        check_cache_version(mark, f, path)
        yield b, mark


def check_node_ids(path: str | Path, manifest: dict) -> None:
    """Refuse a cache whose node id chunk is gone (Zarr would read it as zeros or empty strings)."""
    if int(manifest["num_nodes"]) > 0 and (Path(path) / "node_ids" / "zarr.json").is_file():
        f = Path(path) / "node_ids" / "c" / "0"
        if not f.is_file():
            raise guarded.damaged(f, f"node id chunk of cache {path} is missing", rebuild_hint(path, manifest))


def _mark_problem(path: Path, b: int, nodes: tuple[int, int]) -> str | None:
    """What is wrong with block ``b``'s mark (None: it is whole and names the block's nodes, or
    there is none: an unmarked block is missing, not damaged)."""
    f = mark_file(path, b)
    try:
        mark = json.loads(f.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        mark = None
    if not isinstance(mark, dict) or mark.get("nodes") != list(nodes) or not isinstance(mark.get("digest"), str):
        return f"block mark {f} is unreadable or names other nodes (cut short or damaged)"
    return None


def _chunk_problem(path: Path, nodes: tuple[int, int], chunk_nodes: int, files) -> str | None:
    """The first chunk file of rows ``nodes`` that is missing or not of its full size."""
    start, end = nodes
    for i in range(start // chunk_nodes, (end - 1) // chunk_nodes + 1 if end > start else start // chunk_nodes):
        for name, size in files:
            f = name(path, i)
            try:
                got = f.stat().st_size
            except OSError:
                return f"chunk file {f} is missing"
            if got != size:
                return f"chunk file {f} has {got} bytes, expected {size} (truncated)"
    return None


def damaged_blocks(path: str | Path, manifest: dict, blocks: set[int] | None = None) -> dict[int, str]:
    """Marked blocks (or ``blocks``) whose mark is not whole, or whose chunk files are missing or
    not of full size -> what is wrong with the first such file. Chunk files are checked in the
    raw layout the writer produces."""
    path = Path(path)
    n, bn, c = int(manifest["num_nodes"]), int(manifest["block_nodes"]), int(manifest["chunk_nodes"])
    files = [(chunk_file, chunk_bytes(manifest))]
    if manifest["storage_dtype"] == "int8":
        files.append((scales_chunk_file, c * len(manifest["layers"]) * 4))
    raw = is_raw_layout(path / "states")
    out = {}
    for b in sorted(marked_blocks(path) if blocks is None else blocks):
        nodes = block_range(b, n, bn)
        problem = _mark_problem(path, b, nodes)
        if problem is None and raw:
            problem = _chunk_problem(path, nodes, c, files)
        if problem is not None:
            out[b] = problem
    return out


def content_digest(path: str | Path, manifest: dict) -> str:
    """BLAKE2b-128 (hex) of what a reader gets from the cache: its identity settings, node ids
    and every block mark with the digest of the bytes that block stored. Equal digests mean
    equal states, so a run can tell that the cache at its path is still the one it read;
    reading the marks costs one small file per block."""
    path = Path(path)
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({k: manifest[k] for k in (*IDENTITY_KEYS, "model")}, sort_keys=True).encode())
    ids = path / "node_ids" / "c" / "0"
    h.update(ids.read_bytes() if ids.is_file() else b"")
    for b, mark in _marks(path):  # a mark gone or rewritten while read counts as a change
        h.update(json.dumps([b, mark.get("nodes"), mark.get("digest")] if mark is not None else [b, None]).encode())
    return h.hexdigest()


def _mark_total(path: str | Path, key: str, kind: type, combine):
    """``combine`` over every mark's ``key``; None when a mark lacks it or cannot be read."""
    total = None
    for _, mark in _marks(path):
        value = None if mark is None else mark.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            return None
        total = value if total is None else combine(total, value)
    return 0 if total is None else total


def encode_seconds(path: str | Path) -> float | None:
    """Total encode wall time of a cache: the sum of its block marks' seconds (all shards and
    resumes; model loading excluded). None when a block was written untimed: unknown, never 0."""
    total = _mark_total(path, "seconds", (int, float), lambda a, b: a + b)
    return None if total is None else float(total)


def encode_peak_bytes(path: str | Path) -> int | None:
    """The largest peak memory of the processes that encoded a cache (all shards and resumes;
    LLM loading included): the largest ``peak_bytes`` of its block marks. None when a block
    was written without it: unknown, never 0."""
    return _mark_total(path, "peak_bytes", int, max)
