"""The node texts of a graph as a read-only sequence of ``str`` backed by Arrow blocks.

A 1M-node graph of 200-word texts holds 1.4 GB of text; as a Python list it costs more than
that again. ``TextColumn`` keeps the texts as Arrow string blocks instead: all of them in
memory for an in-memory table or a small file, and for a large ``nodes.parquet`` one block
per row group, decoded on first use and kept in a small LRU (row groups are ~16k rows, so
ascending access, as encode and infer do, decodes each row group once per pass).

Indexing returns a ``str``, a slice a ``list[str]`` (what tokenizers take), ``len`` the node
count; iteration streams block by block. ``digest()`` is a sha256 over the texts' UTF-8
bytes and lengths that does not depend on how the texts are cut into blocks.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

IN_MEMORY_BYTES = 256 << 20  # text columns up to this size (uncompressed) stay fully in memory
KEEP_BLOCKS = 4  # decoded row groups kept for a larger column (~25 MB each at 16k rows)
LIST_CHUNK = 65536  # rows converted at once when hashing a plain list of texts


def hash_strings(h_lengths, h_data, arr: pa.Array) -> None:
    """Feed one string array's value lengths (int64) and UTF-8 bytes to two running hashes."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    bufs = arr.buffers()
    wide = pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type)
    offsets = np.frombuffer(bufs[1], dtype=np.int64 if wide else np.int32)[arr.offset : arr.offset + len(arr) + 1]
    h_lengths.update(np.diff(offsets).astype(np.int64).tobytes())
    if bufs[2] is not None and len(offsets) and offsets[-1] > offsets[0]:
        h_data.update(memoryview(bufs[2])[int(offsets[0]) : int(offsets[-1])])


def strings_digest(blocks) -> bytes:
    """sha256 over an iterable of string arrays, independent of where the blocks are cut."""
    h_lengths, h_data = hashlib.sha256(), hashlib.sha256()
    for arr in blocks:
        hash_strings(h_lengths, h_data, arr)
    return h_lengths.digest() + h_data.digest()


class TextColumn(Sequence):
    """(N,) texts in Arrow blocks; see the module docstring."""

    def __init__(self, starts: np.ndarray, load, keep: int, source: Path | None = None) -> None:
        self._starts = np.asarray(starts, dtype=np.int64)  # (K+1,) first row of each block, then N
        self._load = load  # block index -> pa.StringArray
        self._keep = keep
        self._cache: OrderedDict[int, pa.Array] = OrderedDict()
        self._digest: bytes | None = None
        self.source = source  # the Parquet file for a lazy column (pickling reopens it)

    @classmethod
    def from_array(cls, arr: pa.Array | pa.ChunkedArray) -> TextColumn:
        """An in-memory column over an Arrow string array (its chunks become the blocks)."""
        chunks = list(arr.chunks) if isinstance(arr, pa.ChunkedArray) else [arr]
        chunks = [c.cast(c.type.value_type) if pa.types.is_dictionary(c.type) else c for c in chunks] or [pa.array([], pa.string())]
        starts = np.concatenate([[0], np.cumsum([len(c) for c in chunks])])
        return cls(starts, chunks.__getitem__, keep=0)

    @classmethod
    def from_list(cls, texts: list[str]) -> TextColumn:
        return cls.from_array(pa.array(texts, pa.string()))

    @classmethod
    def from_parquet(cls, path: Path, column: str = "text") -> TextColumn:
        """The ``column`` of a Parquet file, one block per row group, read on demand."""
        path = Path(path)
        pf = pq.ParquetFile(path)  # the open file survives a rename of its folder
        meta = pf.metadata
        rows = [meta.row_group(k).num_rows for k in range(meta.num_row_groups)]
        j = pf.schema_arrow.get_field_index(column)
        size = sum(meta.row_group(k).column(j).total_uncompressed_size for k in range(meta.num_row_groups))
        typ = pf.schema_arrow.field(column).type

        def load(k: int) -> pa.Array:
            arr = pf.read_row_group(k, columns=[column]).column(0).combine_chunks()
            return arr.cast(typ.value_type) if pa.types.is_dictionary(typ) else arr

        keep = len(rows) if size <= IN_MEMORY_BYTES else KEEP_BLOCKS
        return cls(np.concatenate([[0], np.cumsum(rows)]), load, keep=keep, source=path)

    def __reduce__(self):
        if self.source is not None:
            return (TextColumn.from_parquet, (self.source,))
        return (TextColumn.from_array, (pa.chunked_array(list(self.blocks())),))

    @property
    def lazy(self) -> bool:
        """True when not every block is kept in memory."""
        return 0 < self._keep < self.num_blocks

    @property
    def num_blocks(self) -> int:
        return len(self._starts) - 1

    def block(self, k: int) -> pa.Array:
        """Block ``k`` as an Arrow string array (rows ``starts[k]:starts[k+1]``)."""
        if self._keep == 0:  # in-memory blocks
            return self._load(k)
        arr = self._cache.get(k)
        if arr is None:
            arr = self._load(k)
            self._cache[k] = arr
            while len(self._cache) > self._keep:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(k)
        return arr

    def blocks(self) -> Iterator[pa.Array]:
        """Every block in order; a full pass also computes :meth:`digest` on the way."""
        h = None if self._digest is not None else (hashlib.sha256(), hashlib.sha256())
        for k in range(self.num_blocks):
            arr = self.block(k)
            if h is not None:
                hash_strings(*h, arr)
                if k == self.num_blocks - 1:  # before the last yield: a consumer may stop there
                    self._digest = h[0].digest() + h[1].digest()
            yield arr
        if self.num_blocks == 0:
            self._digest = strings_digest([])

    def block_starts(self) -> np.ndarray:
        return self._starts[:-1]

    def digest(self) -> bytes:
        """sha256 of lengths + bytes (64 bytes); computed once."""
        if self._digest is None:
            for _ in self.blocks():
                pass
        return self._digest

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, i):
        n = len(self)
        if isinstance(i, slice):
            return self.take(range(*i.indices(n)))
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"text index {i} out of range for {n} texts")
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        return self.block(k)[i - int(self._starts[k])].as_py()

    def take(self, rows) -> list[str]:
        """Texts of ``rows`` (any order), reading each block once."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) == 0:
            return []
        if rows.min() < 0 or rows.max() >= len(self):
            raise IndexError(f"text index out of range for {len(self)} texts")
        out: list = [None] * len(rows)
        which = np.searchsorted(self._starts, rows, side="right") - 1
        for k in np.unique(which).tolist():
            pos = np.flatnonzero(which == k)
            values = self.block(k).take(pa.array(rows[pos] - self._starts[k])).to_pylist()
            for p, v in zip(pos.tolist(), values):
                out[p] = v
        return out

    def __iter__(self) -> Iterator[str]:
        for arr in self.blocks():
            for a in range(0, len(arr), LIST_CHUNK):
                yield from arr.slice(a, LIST_CHUNK).to_pylist()

    def __eq__(self, other) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)) or len(other) != len(self):
            return False
        if isinstance(other, TextColumn):
            return self.digest() == other.digest()
        return list(self) == list(other)

    __hash__ = None  # mutable-free but compared by content, like a list

    def __repr__(self) -> str:
        mode = f"lazy, {self.num_blocks} row groups" if self.lazy else "in memory"
        return f"TextColumn({len(self)} texts, {mode})"
