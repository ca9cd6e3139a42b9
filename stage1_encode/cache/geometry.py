"""Where a cache's rows live: chunks of whole nodes, blocks of chunks, shards of blocks.

Chunk size: (8, S, H) was fastest for random node reads at S = 32, H = 1024 (524 KB
chunks, 20k nodes, fp16). Re-measured here (N = 20,000, S = 7, H = 576, fp16, 2 shared cores, warm
page cache), chunk nodes -> write all / read 1,024 random nodes / read all:
4: 12.8 / 0.96 / 5.3 s;  8: 8.7 / 1.02 / 2.4 s;  16: 7.6 / 1.03 / 1.9 s;  32: 5.0 / 0.88 / 1.6 s;
64: 4.7 / 0.72 / 1.6 s. Per-chunk overhead dominates until chunks reach a few hundred KB,
so ``chunk_nodes_for`` picks the largest power of two (<= 64) whose chunk stays <= 512 KiB:
64 for SmolLM2 (8 KB a node), 8 for a 7B model with 7 rungs (57 KB a node).

Work is split into chunk-aligned node blocks of ``block_nodes`` nodes; shard I of N owns
blocks ``b % N == I``, so disjoint shards touch disjoint chunks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MAX_CHUNK_NODES = 64
MAX_CHUNK_BYTES = 512 << 10
DEFAULT_BLOCK_NODES = 256


def chunk_nodes_for(num_rungs: int, hidden_size: int, itemsize: int, block_nodes: int) -> int:
    """Nodes per chunk: largest power of two <= 64 with a chunk <= 512 KiB that divides the block."""
    c = MAX_CHUNK_NODES
    while c > 1 and (c * num_rungs * hidden_size * itemsize > MAX_CHUNK_BYTES or block_nodes % c):
        c //= 2
    return c


def num_blocks(num_nodes: int, block_nodes: int) -> int:
    return (num_nodes + block_nodes - 1) // block_nodes


def block_range(b: int, num_nodes: int, block_nodes: int) -> tuple[int, int]:
    """Node rows ``[start, end)`` of block ``b``."""
    return b * block_nodes, min((b + 1) * block_nodes, num_nodes)


def shard_blocks(n_blocks: int, num_shards: int, shard_id: int) -> list[int]:
    """Blocks of one shard: every ``num_shards``-th (round robin balances text lengths)."""
    return list(range(shard_id, n_blocks, num_shards))


def node_ranges(blocks, num_nodes: int, block_nodes: int) -> list[list[int]]:
    """Blocks -> merged node ranges ``[[start, end), ...]`` in order."""
    out: list[list[int]] = []
    for b in sorted(blocks):
        s, e = block_range(b, num_nodes, block_nodes)
        if out and out[-1][1] == s:
            out[-1][1] = e
        else:
            out.append([s, e])
    return out


def chunk_file(path: str | Path, i: int) -> Path:
    """The states of chunk ``i`` (chunk_nodes, S, H), raw bytes."""
    return Path(path) / "states" / "c" / str(i) / "0" / "0"


def scales_chunk_file(path: str | Path, i: int) -> Path:
    """int8 caches: the float32 scales (chunk_nodes, S) of chunk ``i``, raw bytes."""
    return Path(path) / "scales" / "c" / str(i) / "0"


def chunk_bytes(manifest: dict) -> int:
    """Size of every chunk file (edge chunks are stored full size): chunk_nodes x S x H x itemsize."""
    itemsize = np.dtype(manifest["storage_dtype"]).itemsize
    return int(manifest["chunk_nodes"]) * len(manifest["layers"]) * int(manifest["hidden_size"]) * itemsize


def disk_bytes(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
