"""The cache reader: states of any nodes and rungs, in the storage dtype (int8 dequantized).

Reads go to the chunk files directly on the raw layout the writer produces
(stage1_encode/cache/raw.py) and through zarr otherwise. A cache whose states fit the memory
budget is read whole once; larger ones are read chunk by chunk or row by row.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipeline.core import guarded
from pipeline.core.errors import InputError
from stage1_encode.cache.blocks import check_node_ids, damaged_blocks, marked_blocks
from stage1_encode.cache.geometry import node_ranges, num_blocks
from stage1_encode.cache.manifest import completion_command, read_manifest, rebuild_hint
from stage1_encode.cache.quantize import dequantize_int8, value_dtype
from stage1_encode.cache.raw import RawChunks, is_raw_layout

DENSE_CHUNK_ROWS = 8  # wanted rows from which read_rows reads a whole chunk rather than row by row
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
        hint = rebuild_hint(self.path, m)
        try:
            group = zarr.open_group(str(self.path), mode="r")
            self._states = group["states"]
            self.node_ids = np.asarray(group["node_ids"][:])
            self._group = group
        except Exception as err:  # zarr raises many types for damaged metadata or a missing array
            raise guarded.damaged(self.path, f"the Zarr arrays cannot be read ({type(err).__name__}: {err})", hint) from None
        check_node_ids(self.path, m)
        want = (m["num_nodes"], len(m["layers"]), m["hidden_size"])
        if tuple(self._states.shape) != want or self.node_ids.shape != (m["num_nodes"],):
            raise guarded.damaged(
                self.path, f"states {tuple(self._states.shape)} and node_ids {self.node_ids.shape} do not match manifest.json "
                f"(N, S, H) = {want}", hint)
        self.storage_dtype: str = m["storage_dtype"]
        self.dtype = value_dtype(self.storage_dtype)  # what reads return
        self._scales_array = None
        if self.storage_dtype == "int8":
            try:
                self._scales_array = group["scales"]
            except Exception:  # KeyError, or zarr's own errors for damaged metadata
                raise guarded.damaged(self.path, "an int8 cache without its scales array", hint) from None
            if tuple(self._scales_array.shape) != want[:2]:
                raise guarded.damaged(self.path, f"scales {tuple(self._scales_array.shape)} do not match (N, S) = {want[:2]}", hint)
        self._scales: np.ndarray | None = None  # (N, S) float32, read whole on first use
        self.layers: list[int] = list(m["layers"])
        self.num_nodes: int = m["num_nodes"]
        self.hidden_size: int = m["hidden_size"]
        self.chunk_nodes: int = int(self._states.chunks[0])
        self._all: np.ndarray | None = None
        self._raw = RawChunks(self.path, m) if is_raw_layout(self.path / "states") else None

    def text_hashes(self) -> np.ndarray:
        """(N, 16) uint8 hashes of the texts the rows were encoded from."""
        try:
            return np.asarray(self._group["text_hashes"][:])
        except Exception:  # KeyError, or zarr's own errors for damaged metadata
            raise guarded.damaged(self.path, "the text_hashes array is missing or unreadable", rebuild_hint(self.path, self.manifest)) from None

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
        done = marked_blocks(self.path) - set(self.damaged_blocks())
        return [b for b in range(self.num_blocks) if b not in done]

    def check_complete(self) -> None:
        """InputError naming the missing (or damaged) blocks/shards and the command that completes them."""
        missing = self.missing_blocks()
        if not missing:
            return
        m = self.manifest
        ranges = ", ".join(f"{s}-{e - 1}" for s, e in node_ranges(missing, self.num_nodes, m["block_nodes"])[:5])
        shards = sorted({b % m["num_shards"] for b in missing})
        damaged = self.damaged_blocks()
        msg = f"cache {self.path} is incomplete: {len(missing)} of {self.num_blocks} blocks missing (nodes {ranges})"
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
            if self.manifest["graph_source"] == graph.source:  # same name, other content
                why = f"graph {graph.source!r} {was} changed since cache {self.path} was built (now {graph.fingerprint[:12]})"
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

    def read_all(self, rungs: list[int] | None = None) -> np.ndarray:
        """(N, S', H) states of every node at ``rungs``: whole chunks in order; nothing is kept
        (peak memory = the result plus one chunk)."""
        if self._all is not None:
            return self._all if rungs is None else self._all[:, np.asarray(rungs, dtype=np.int64)]
        return self._read_all(slice(None) if rungs is None else np.asarray(rungs, dtype=np.int64))

    def _read_all(self, rsel=slice(None)) -> np.ndarray:
        """(N, S', H): every chunk in order, keeping only the rungs ``rsel``."""
        if self._raw is None:
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
        if self._raw is None:
            out[:rows] = self._states[i * c : i * c + rows]
        else:
            self._raw.read_into(i, out)
        return rows

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()

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
        if self._raw is None:
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
            for j in sel.tolist():
                target = out[j] if rungs is None else row
                self._raw.read_row(ch, offsets[j], target, int(nodes[j]))
                if rungs is not None:
                    out[j] = row[rsel]
        return out

    def _read_by_chunk(self, nodes: np.ndarray, rsel) -> np.ndarray:
        """Other layouts: read each needed chunk once, in chunk order (runs of chunks), through zarr."""
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


def open_cache(path: str | Path) -> CacheReader:
    """Open a cache for reading (does not check completeness: call ``check_complete``)."""
    return CacheReader(path)
