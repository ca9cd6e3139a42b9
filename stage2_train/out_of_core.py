"""Training from a cache larger than memory: chunk-grouped batches, a chunk LRU, read-ahead.

``pipeline train --memory-budget SIZE`` keeps the cache's rungs in memory when they fit the
budget (N x S x H x 2 bytes), as before; otherwise features come from
:class:`OutOfCoreFeatures`:

- **Order.** Training targets are grouped by the cache chunk that holds their row; each
  epoch visits the chunks in a random order and the targets of each chunk in a random order,
  then cuts batches. A batch's targets thus sit in one or two chunks, read whole once an
  epoch. Trade-off: consecutive batches come from neighbouring chunk positions rather than
  from the whole graph (a coarser shuffle than a full permutation; SGD sees each chunk's
  targets together). Nodes are not ordered by label or degree in a cache, so the batches
  stay mixed.
- **Reads.** A batch needs its targets' rows and their sampled neighbours' rows, which lie
  anywhere. Rows are gathered chunk by chunk in chunk order: from an LRU of decoded chunks
  (bounded by 3/4 of the budget); a missing chunk holding at least ``WHOLE_CHUNK_ROWS``
  wanted rows is read whole (one file read) and kept; a few scattered rows of a chunk are
  read one ``pread`` each (a whole 64-node chunk for one neighbour row would read 64x the
  bytes).
- **Read-ahead.** A background thread samples and reads the next batches (queue depth
  ``readahead``), so reads overlap the model's compute; it stops when the epoch ends, breaks
  or raises. Sampling stays in batch order on the one generator, so a run is reproducible.

Evaluation reads through the same LRU (``features(nodes)``). Memory: the LRU plus the
in-flight batches (the remaining quarter of the budget), on top of the graph, sampler and
model. Shapes: N nodes, n batch rows, S rungs, H LLM width, c nodes per chunk.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import OrderedDict

import numpy as np
import torch

from pipeline.errors import InputError
from stage1_encode.cache import DENSE_CHUNK_ROWS
from stage2_train.config import format_size

MIN_BUDGET_CHUNKS = 2  # the chunk cache (3/4 of the budget) must hold at least one chunk
WHOLE_CHUNK_ROWS = DENSE_CHUNK_ROWS  # wanted rows from which a missing chunk is read whole (and cached)


def chunk_group_batches(nodes: np.ndarray, size: int, chunk_nodes: int, gen: torch.Generator) -> list[np.ndarray]:
    """Batches of ``nodes`` ordered by chunk: chunks in random order, nodes in random order within."""
    nodes = nodes[torch.randperm(len(nodes), generator=gen).numpy()]  # random within each chunk
    chunks = np.unique(nodes // chunk_nodes)
    rank = np.empty(int(chunks.max()) + 1 if len(chunks) else 0, dtype=np.int64)
    rank[chunks] = torch.randperm(len(chunks), generator=gen).numpy()  # random chunk order
    nodes = nodes[np.argsort(rank[nodes // chunk_nodes], kind="stable")]
    return [nodes[i : i + size] for i in range(0, len(nodes), size)]


def default_budget() -> int:
    """Without ``--memory-budget``: the old 8 GiB rule, capped at half the memory available now."""
    from stage2_train.data import IN_MEMORY_LIMIT_BYTES

    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return IN_MEMORY_LIMIT_BYTES
    return min(IN_MEMORY_LIMIT_BYTES, avail // 2)


def open_features(data, budget: int | None, readahead: int = 1):
    """The cache's features for training: ``(features, mode)``; in memory when the used rungs
    (N x S x H x 2 bytes) fit ``budget`` (None: :func:`default_budget`), else out of core."""
    from stage2_train.data import CachedFeatures

    reader = data.reader
    need = reader.num_nodes * len(data.positions) * reader.hidden_size * np.dtype(reader.manifest["storage_dtype"]).itemsize
    limit = default_budget() if budget is None else budget
    mode = {"mode": "in-memory", "memory_budget": budget, "limit_bytes": limit, "rungs_bytes": need}
    if need <= limit:
        return CachedFeatures(data, limit=limit), mode
    features = OutOfCoreFeatures(data, limit, readahead)
    return features, {**mode, "mode": "out-of-core", **features.describe()}


def describe_mode(mode: dict, num_rungs: int, num_nodes: int, seconds: float) -> str:
    """The log line saying how features are read."""
    size = format_size(mode["rungs_bytes"])
    budget = format_size(mode["limit_bytes"]) + ("" if mode["memory_budget"] is not None else " (default)")
    if mode["mode"] == "in-memory":
        return f"in memory: loaded {num_rungs} rung(s) of {num_nodes} nodes ({size}, budget {budget}) in {seconds:.1f}s"
    return (f"out of core: {num_rungs} rung(s) of {num_nodes} nodes ({size}) exceed the budget {budget}; chunk-ordered "
            f"batches, chunk cache {format_size(mode['lru_capacity_bytes'])}, read-ahead {mode['readahead']} batch(es)")


class ChunkLRU:
    """Decoded chunks (c', S, H) by chunk index, least recently used dropped past ``capacity`` bytes."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.nbytes = capacity, 0
        self._items: OrderedDict[int, np.ndarray] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, i: int) -> np.ndarray | None:
        x = self._items.get(i)
        if x is None:
            self.misses += 1
        else:
            self.hits += 1
            self._items.move_to_end(i)
        return x

    def put(self, i: int, x: np.ndarray) -> None:
        if x.nbytes > self.capacity:
            return
        self._items[i] = x
        self.nbytes += x.nbytes
        while self.nbytes > self.capacity:
            self.nbytes -= self._items.popitem(last=False)[1].nbytes


class OutOfCoreFeatures:
    """``features(nodes (n,)) -> (n, S, H)`` float32 read from disk through a chunk LRU.

    ``epoch(sampler, nodes, size, gen)`` yields ``(targets (B,), subgraph, states (n, S, H))``
    for one training epoch in chunk-grouped order, prepared ``readahead`` batches ahead.
    """

    def __init__(self, data, budget: int, readahead: int = 1) -> None:
        reader = data.reader
        self.reader, self.positions, self.readahead = reader, np.asarray(data.positions), readahead
        self.chunk_nodes, self.dtype = reader.chunk_nodes, np.dtype(reader.manifest["storage_dtype"])
        chunk_bytes = self.chunk_nodes * len(self.positions) * reader.hidden_size * self.dtype.itemsize  # used rungs only
        if budget < MIN_BUDGET_CHUNKS * chunk_bytes:
            raise InputError(f"--memory-budget {format_size(budget)}: too small for out-of-core training of this cache; give at "
                             f"least {format_size(MIN_BUDGET_CHUNKS * chunk_bytes)} ({MIN_BUDGET_CHUNKS} chunks of {format_size(chunk_bytes)})")
        self.lru = ChunkLRU(budget * 3 // 4)
        self.rows_read = self.chunks_read = 0
        self._lock = threading.Lock()  # evaluation and the read-ahead thread never overlap; cheap insurance

    def rows(self, nodes: np.ndarray) -> np.ndarray:
        """(n, S, H) storage-dtype rows of ``nodes`` (any order, repeats allowed), gathered in chunk order."""
        uniq, inverse = np.unique(np.asarray(nodes, dtype=np.int64), return_inverse=True)  # sorted: chunk order
        c = self.chunk_nodes
        out = np.empty((len(uniq), len(self.positions), self.reader.hidden_size), dtype=self.dtype)  # (u, S, H)
        chunk_of = uniq // c
        chunks, starts, counts = np.unique(chunk_of, return_index=True, return_counts=True)
        scattered = []
        with self._lock:
            for ch, a, k in zip(chunks.tolist(), starts.tolist(), counts.tolist()):
                block = self.lru.get(ch)
                if block is None and k >= WHOLE_CHUNK_ROWS:
                    block = np.ascontiguousarray(self.reader.read_chunk(ch)[:, self.positions])  # (c', S, H)
                    self.lru.put(ch, block)
                    self.chunks_read += 1
                if block is None:
                    scattered.append(np.arange(a, a + k))
                else:
                    out[a : a + k] = block[uniq[a : a + k] - ch * c]
            if scattered:
                idx = np.concatenate(scattered)
                out[idx] = self.reader.read_rows(uniq[idx], self.positions)
                self.rows_read += len(idx)
        return out[inverse]

    def __call__(self, nodes: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.rows(nodes.numpy())).float()

    def epoch(self, sampler, nodes: np.ndarray, size: int, gen: torch.Generator, max_batches: int | None = None):
        parts = chunk_group_batches(nodes, size, self.chunk_nodes, gen)[:max_batches]

        def produce(b):
            sub = sampler.sample(b, gen)
            return b, sub, self(sub.nodes)

        return ReadAhead(parts, produce, self.readahead) if self.readahead > 0 else (produce(b) for b in parts)

    def describe(self) -> dict:
        return {"lru_capacity_bytes": self.lru.capacity, "chunk_nodes": self.chunk_nodes, "readahead": self.readahead}


class ReadAhead:
    """Iterates ``produce(item)`` over ``items`` in order, computed by a background thread at most
    ``depth`` items ahead. An error in ``produce`` is raised in the consumer; ``close()`` (also on
    leaving a ``with``/``contextlib.closing`` block, or breaking out) stops and joins the thread."""

    _DONE = object()

    def __init__(self, items, produce, depth: int = 1) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(list(items), produce), name="read-ahead", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, items, produce) -> None:
        try:
            for item in items:
                if self._stop.is_set() or not self._put(("ok", produce(item))):
                    return
            self._put(("ok", self._DONE))
        except BaseException as err:  # handed to the consumer, raised there
            self._put(("error", err))

    def __iter__(self):
        return self

    def __next__(self):
        if self._stop.is_set():
            raise StopIteration
        while True:
            try:
                kind, value = self._queue.get(timeout=0.1)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("read-ahead thread ended without a result") from None
        if kind == "error":
            self.close()
            raise value
        if value is self._DONE:
            self.close()
            raise StopIteration
        return value

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
