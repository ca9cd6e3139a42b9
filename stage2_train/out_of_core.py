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
  (half the budget, in the fixed slots of one preallocated slab); a missing chunk holding
  at least ``WHOLE_CHUNK_ROWS`` wanted rows is read whole (one file read) and kept; a few
  scattered rows of a chunk are read one ``pread`` each (a whole 64-node chunk for one
  neighbour row would read 64x the bytes).
- **Micro-batches.** The budget bounds the step too (:mod:`stage2_train.step_memory`): half
  goes to the chunk cache, half to the batches in flight, shared by the micro-batch being
  trained, the one being read and ``readahead`` waiting ones. A batch whose subgraphs
  exceed that share is cut into micro-batches of whole subgraphs, their gradients
  accumulated into one optimiser step; evaluation batches are cut the same way. A target
  whose subgraph alone exceeds it (a hub with ``--fanout 0``) is refused before training,
  with the budget it needs.
- **Read-ahead.** A background thread samples and reads the next micro-batches (queue depth
  ``readahead``), so reads overlap the model's compute; it stops when the epoch ends, breaks
  or raises. Sampling stays in batch order on the one generator, so a run is reproducible.

Evaluation reads through the same LRU (``features(nodes)``). Memory: the LRU plus the
micro-batches in flight and the step's working set, on top of the graph, sampler and model;
the sampler induces a batch's edges a bounded number of candidates at a time
(``sampling.CANDIDATE_CHUNK``), and buffers over 64 KiB are unmapped when freed
(:func:`pin_mmap_threshold`): without either, a 512-target evaluation batch of 2-hop
subgraphs and a fragmented heap took the RSS well past the budget (docs/scale.md).
Shapes: N nodes, n batch rows, S rungs, H LLM width, c nodes per chunk.
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict

import numpy as np
import torch

from pipeline.core.errors import InputError
from pipeline.core.parsers import format_size
from stage1_encode.cache.reader import DENSE_CHUNK_ROWS, memory_budget
from stage2_train.sampling import SubgraphBatch
from stage2_train.step_memory import MicroBatch, StepCost, select_graphs, split_batch, step_limit

MIN_BUDGET_CHUNKS = 2  # the chunk cache (half the budget) must hold at least one chunk
CHECK_HUBS = 16  # targets of highest degree whose step memory is checked before training
WHOLE_CHUNK_ROWS = DENSE_CHUNK_ROWS  # wanted rows from which a missing chunk is read whole (and cached)
M_MMAP_THRESHOLD, MMAP_THRESHOLD = -3, 64 << 10  # glibc's mallopt parameter, and the bytes it is pinned at


def pin_mmap_threshold() -> None:
    """Serve every buffer over ``MMAP_THRESHOLD`` bytes by its own mapping, unmapped when freed
    (glibc ``mallopt``; a no-op elsewhere), for the rest of the process. glibc otherwise raises
    the threshold to the largest buffer freed (up to 32 MiB), so a step's freed buffers stay in
    a fragmented heap and the RSS outgrows the budget (docs/scale.md). The step estimate
    (:mod:`stage2_train.step_memory`) was fitted under this setting."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass


def chunk_group_batches(nodes: np.ndarray, size: int, chunk_nodes: int, gen: torch.Generator) -> list[np.ndarray]:
    """Batches of ``nodes`` ordered by chunk: chunks in random order, nodes in random order within."""
    nodes = nodes[torch.randperm(len(nodes), generator=gen).numpy()]  # random within each chunk
    chunks = np.unique(nodes // chunk_nodes)
    rank = np.empty(int(chunks.max()) + 1 if len(chunks) else 0, dtype=np.int64)
    rank[chunks] = torch.randperm(len(chunks), generator=gen).numpy()  # random chunk order
    nodes = nodes[np.argsort(rank[nodes // chunk_nodes], kind="stable")]
    return [nodes[i : i + size] for i in range(0, len(nodes), size)]


def open_features(data, budget: int | None, readahead: int = 1, cost: StepCost | None = None):
    """The cache's features for training: ``(features, mode)``; in memory when the used rungs
    (N x S x H x 2 bytes) fit ``budget`` (None: the cache module's :func:`memory_budget`), else out of core,
    with micro-batches bounded by ``cost`` (None: whole batches)."""
    from stage2_train.data import CachedFeatures

    reader = data.reader
    need = reader.rungs_nbytes(len(data.positions))
    limit = memory_budget() if budget is None else budget
    mode = {"mode": "in-memory", "memory_budget": budget, "limit_bytes": limit, "rungs_bytes": need}
    if need <= limit:
        return CachedFeatures(data, limit=limit), mode
    features = OutOfCoreFeatures(data, limit, readahead, cost)
    return features, {**mode, "mode": "out-of-core", **features.describe()}


def describe_mode(mode: dict, num_rungs: int, num_nodes: int, seconds: float) -> str:
    """The log line saying how features are read."""
    size = format_size(mode["rungs_bytes"])
    budget = format_size(mode["limit_bytes"]) + ("" if mode["memory_budget"] is not None else " (default)")
    if mode["mode"] == "in-memory":
        return f"in memory: loaded {num_rungs} rung(s) of {num_nodes} nodes ({size}, budget {budget}) in {seconds:.1f}s"
    return (f"out of core: {num_rungs} rung(s) of {num_nodes} nodes ({size}) exceed the budget {budget}; chunk-ordered "
            f"batches, chunk cache {format_size(mode['lru_capacity_bytes'])}, read-ahead {mode['readahead']} micro-batch(es)"
            + (f" of at most {format_size(mode['step_limit_bytes'])} step memory each" if mode.get("step_limit_bytes") else ""))


class ChunkLRU:
    """Decoded chunks (c, S, H) by chunk index, in the fixed slots of one preallocated slab;
    the least recently used chunk's slot is refilled first.

    Reading and evicting chunks never allocates: separate arrays freed in LRU order would
    leave the heap fragmented (resident pages beyond the live chunks). The slab's pages
    become resident as slots fill, ``capacity`` bytes at most.
    """

    def __init__(self, capacity: int, block_shape: tuple[int, ...], dtype) -> None:
        self.block_bytes = int(np.prod(block_shape)) * np.dtype(dtype).itemsize
        self.capacity, self.num_slots = capacity, capacity // self.block_bytes
        self._slab = np.empty((self.num_slots, *block_shape), dtype=dtype)  # untouched pages cost nothing
        self._items: OrderedDict[int, tuple[int, int]] = OrderedDict()  # chunk -> (slot, rows)
        self.hits = self.misses = 0

    @property
    def nbytes(self) -> int:
        return len(self._items) * self.block_bytes

    def get(self, i: int) -> np.ndarray | None:
        """Chunk ``i``'s rows (c', S, H), a view into the slab, or None."""
        item = self._items.get(i)
        if item is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(i)
        return self._slab[item[0], : item[1]]

    def slot(self, i: int, rows: int) -> np.ndarray:
        """A slot (c, S, H) to fill with chunk ``i`` (``rows`` valid rows), taken from the least
        recently used chunk when all are in use; ``i`` is cached from now on."""
        if len(self._items) < self.num_slots:
            s = len(self._items)
        else:
            s = self._items.popitem(last=False)[1][0]
        self._items[i] = (s, rows)
        return self._slab[s]


class OutOfCoreFeatures:
    """``features(nodes (n,)) -> (n, S, H)`` float32 read from disk through a chunk LRU.

    ``epoch(sampler, nodes, size, gen)`` yields the :class:`MicroBatch` es of one training
    epoch in chunk-grouped order, prepared ``readahead`` micro-batches ahead. With a
    ``cost`` (:func:`stage2_train.step_memory.step_cost`), each micro-batch's estimated step
    memory stays within ``step_limit`` (:func:`stage2_train.step_memory.step_limit` of the
    budget's half left by the chunk cache).
    """

    orders_batches = True  # a features.BatchOrderingFeatures

    def __init__(self, data, budget: int, readahead: int = 1, cost: StepCost | None = None) -> None:
        reader = data.reader
        self.reader, self.positions, self.readahead = reader, np.asarray(data.positions), readahead
        self.chunk_nodes, self.dtype = reader.chunk_nodes, reader.dtype  # int8 chunks are kept dequantized
        chunk_bytes = self.chunk_nodes * len(self.positions) * reader.hidden_size * self.dtype.itemsize  # used rungs only
        if budget < MIN_BUDGET_CHUNKS * chunk_bytes:
            raise InputError(f"--memory-budget {format_size(budget)}: too small for out-of-core training of this cache; give at "
                             f"least {format_size(MIN_BUDGET_CHUNKS * chunk_bytes)} ({MIN_BUDGET_CHUNKS} chunks of {format_size(chunk_bytes)})")
        self.budget, self.cost = budget, cost
        pin_mmap_threshold()
        self.lru = ChunkLRU(budget // 2, (self.chunk_nodes, len(self.positions), reader.hidden_size), self.dtype)
        self._all_rungs = list(self.positions) == list(range(reader.shape[1]))
        self._scratch = None if self._all_rungs else np.empty((self.chunk_nodes, *reader.shape[1:]), dtype=self.dtype)
        self.step_limit = step_limit(budget - self.lru.capacity, cost, readahead) if cost is not None else None
        self.rows_read = self.chunks_read = self.micro_batches = 0
        self._lock = threading.Lock()  # evaluation and the read-ahead thread never overlap; cheap insurance

    def split(self, sub: SubgraphBatch) -> list[tuple[int, int]]:
        """Target ranges of ``sub`` whose step memory fits ``step_limit`` (one range without a cost)."""
        if self.cost is None:
            return [(0, len(sub.targets))]
        return split_batch(sub, self.cost, self.step_limit, f"--memory-budget {format_size(self.budget)}: ", self._advice)

    def pieces(self, sub: SubgraphBatch) -> list[SubgraphBatch]:
        """``sub`` cut into batches that fit ``step_limit`` (evaluation)."""
        ranges = self.split(sub)
        return [sub] if len(ranges) == 1 else [select_graphs(sub, g0, g1) for g0, g1 in ranges]

    def check(self, sampler, nodes: np.ndarray) -> None:
        """Refuse before training when one of the ``CHECK_HUBS`` highest-degree ``nodes`` has a
        subgraph (evaluation draw) that alone exceeds ``step_limit``; the epoch checks every
        subgraph as it comes."""
        if self.cost is None or not len(nodes):
            return
        hubs = nodes[np.argsort(-sampler.deg[nodes].numpy(), kind="stable")[:CHECK_HUBS]]
        self.split(sampler.sample(hubs))

    def _advice(self, need: int) -> str:
        budget = -(-need * self.budget // self.step_limit) + 1  # the budget whose step limit fits ``need``
        return (f" (half the budget is the chunk cache, the other half holds the step, the micro-batch being read and "
                f"{self.readahead} read ahead); give --memory-budget {format_size(budget)} or more, or smaller subgraphs "
                "(a lower --fanout or --hops)")

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
                    block = self._read_chunk(ch)
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

    def _read_chunk(self, ch: int) -> np.ndarray:
        """Chunk ``ch``'s used rungs (c', S, H), read into an LRU slot."""
        rows = min(self.chunk_nodes, self.reader.num_nodes - ch * self.chunk_nodes)
        slot = self.lru.slot(ch, rows)
        if self._all_rungs:
            self.reader.read_chunk_into(ch, slot)
        else:
            self.reader.read_chunk_into(ch, self._scratch)
            slot[:rows] = self._scratch[:rows, self.positions]
        return slot[:rows]

    def __call__(self, nodes: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.rows(nodes.numpy())).float()

    def epoch(self, sampler, nodes: np.ndarray, size: int, gen: torch.Generator, max_batches: int | None = None):
        parts = chunk_group_batches(nodes, size, self.chunk_nodes, gen)[:max_batches]

        def produce():  # runs in the read-ahead thread: sampling, cutting, reading, in batch order
            for b in parts:
                sub = sampler.sample(b, gen)
                ranges = self.split(sub)
                for k, (g0, g1) in enumerate(ranges):
                    self.micro_batches += 1
                    piece = sub if len(ranges) == 1 else select_graphs(sub, g0, g1)
                    yield MicroBatch(b[g0:g1], piece, self(piece.nodes), (g1 - g0) / len(b), k == len(ranges) - 1)

        return ReadAhead(produce(), depth=self.readahead) if self.readahead > 0 else produce()

    def describe(self) -> dict:
        out = {"lru_capacity_bytes": self.lru.capacity, "chunk_nodes": self.chunk_nodes, "readahead": self.readahead}
        return out | ({"step_limit_bytes": self.step_limit} if self.step_limit is not None else {})


class ReadAhead:
    """Iterates ``produce(item)`` (default: the item itself) over ``items``, an iterable consumed
    lazily in a background thread at most ``depth`` items ahead, in order. An error in
    ``produce`` or ``items`` is raised in the consumer; ``close()`` (also on leaving a
    ``with``/``contextlib.closing`` block, or breaking out) stops and joins the thread."""

    _DONE = object()

    def __init__(self, items, produce=None, depth: int = 1) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(items, produce), name="read-ahead", daemon=True)
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
                if self._stop.is_set() or not self._put(("ok", item if produce is None else produce(item))):
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
