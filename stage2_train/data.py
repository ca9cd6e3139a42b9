"""What training reads: the cache (checked against its graph), the splits, and node features.

Features come from one of two sources with the same call, ``features(nodes) -> (n, S, H)``:

- :class:`CachedFeatures`: the cache's rungs, read whole into memory when they fit
  (sequential reads are what Zarr is fast at, docs/design.md section 3), else per batch with the
  node rows sorted so reads follow the chunk order;
- :class:`LiveFeatures` (``--no-cache``): the frozen LLM encodes the batch's node texts
  inside the loop, through stage 1's encoder, with the cache's model, pooling and max
  length, in the cache's compute dtype. Its output is rounded as the cache stores states
  (fp16, or int8 rows), so both modes see the same numbers.

Shapes: N graph nodes, n batch nodes, S rungs, H LLM width.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.core.errors import InputError
from pipeline.core.graph import TextGraph, load_graph
from pipeline.core.parsers import parse_random_split
from pipeline.core.progress import log
from stage1_encode.cache.reader import memory_budget



@dataclass
class TrainData:
    """The cache, its graph and the rung positions (into the cache's S axis) used."""

    cache_path: Path
    reader: object  # stage1_encode.cache.reader.CacheReader
    graph: TextGraph
    layers: list[int]  # LLM state index of each used rung
    positions: list[int]  # their positions in the cache's rung axis

    @property
    def manifest(self) -> dict:
        return dict(self.reader.manifest)


def open_train_data(cache_path: Path, rungs: tuple[int, ...] | None, layer: int | None, arch: str) -> TrainData:
    """Open and check the cache: complete, made from its graph, holding the requested rungs."""
    from stage1_encode.cache.manifest import encode_command
    from stage1_encode.cache.reader import open_cache

    reader = open_cache(cache_path)
    reader.check_complete()
    graph = load_graph(reader.manifest["graph_source"])
    reader.check_graph(graph)
    cached = [int(x) for x in reader.layers]
    if arch == "ladder":
        wanted = list(rungs) if rungs is not None else cached
        flag = "--rungs"
    else:
        wanted = [layer if layer is not None else cached[-1]]
        flag = "--layer"
    missing = [x for x in wanted if x not in cached]
    beyond = [x for x in missing if not 0 <= x <= cached[-1]]  # the cache always holds the LLM's last state
    if beyond:
        raise InputError(f"{flag}: the LLM of cache {cache_path} has states 0..{cached[-1]} (0 = embeddings), "
                         f"not {beyond}; the cache holds {cached}")
    if missing:
        need = sorted(set(cached) | set(missing))
        raise InputError(f"{flag}: cache {cache_path} has LLM states {cached}, not {missing}; choose among those, or "
                         f"re-encode with `{encode_command(reader.manifest, 'NEW_CACHE', need)}`")
    return TrainData(Path(cache_path), reader, graph, wanted, [cached.index(x) for x in wanted])


DEFAULT_SPLIT_NAME = "random_60_20_20"  # the built-in graphs' split files, one per seed
DEFAULT_RANDOM_SPLIT = "random:0.6,0.2,0.2"


def default_split(graph: TextGraph) -> str:
    """The split without ``--split``: the graph's split column when it has one, else its
    ``random_60_20_20`` split files, else a random 60/20/20 split seeded by each seed."""
    if any(s is not None for s in graph.split):
        return "column"
    if any(n == DEFAULT_SPLIT_NAME or n.startswith(f"{DEFAULT_SPLIT_NAME}_seed") for n in graph.named_splits):
        return DEFAULT_SPLIT_NAME
    return DEFAULT_RANDOM_SPLIT


def training_splits(graph: TextGraph, spec: str | None, seeds) -> dict[int, dict[str, np.ndarray]]:
    """Every seed's split (:func:`resolve_split`), refused before any training when the graph
    has fewer than 2 classes or a seed's split is unusable."""
    if graph.num_classes < 2:
        raise InputError(f"graph '{graph.name}': needs at least 2 label classes to train, found {graph.num_classes}")
    return {s: resolve_split(graph, spec, s) for s in seeds}


def log_default_split(graph: TextGraph, spec: str | None) -> None:
    """Say which split a run without ``--split`` trains on (once its checks have passed)."""
    if spec is None:
        log(f"split: {default_split(graph)} (the default for graph '{graph.name}'; --split chooses another)")


def resolve_split(graph: TextGraph, spec: str | None, seed: int) -> dict[str, np.ndarray]:
    """``{"train", "val", "test"} -> sorted labeled node indices`` for this seed.

    ``spec``: None (:func:`default_split`), ``column``, a split name (``NAME`` or, per seed,
    ``NAME_seed{seed}``), or ``random:a,b,c`` (a seeded permutation of the labeled nodes).
    """
    has_column = any(s is not None for s in graph.split)
    if spec is None:
        spec = default_split(graph)
    labeled = np.flatnonzero(graph.labels >= 0)
    if spec.startswith("random:"):
        fr = parse_random_split(spec)
        perm = labeled[np.random.default_rng(seed).permutation(len(labeled))]
        a, b = int(round(fr[0] * len(perm))), int(round((fr[0] + fr[1]) * len(perm)))
        c = int(round(sum(fr) * len(perm)))
        parts = {"train": perm[:a], "val": perm[a:b], "test": perm[b:c]}
    elif spec == "column":
        parts = graph.split_indices(None)
    elif spec in graph.named_splits:
        parts = graph.split_indices(spec)
    elif f"{spec}_seed{seed}" in graph.named_splits:
        parts = graph.split_indices(f"{spec}_seed{seed}")
    else:
        names = sorted({n.rsplit("_seed", 1)[0] for n in graph.named_splits})
        raise InputError(
            f"--split {spec}: graph '{graph.name}' has no split '{spec}' or '{spec}_seed{seed}' "
            f"(known: {', '.join(names + ['column' if has_column else ''] ).strip(', ') or 'none'}; or random:0.6,0.2,0.2)"
        )
    out = {k: np.sort(v[graph.labels[v] >= 0]) for k, v in parts.items()}
    if len(out["train"]) == 0 or len(out["val"]) == 0:
        raise InputError(f"--split {spec}: seed {seed} leaves no labeled train or val nodes")
    return out


class CachedFeatures:
    """Rungs from the cache: ``features(nodes (n,)) -> (n, S, H)`` float32."""

    orders_batches = False

    def __init__(self, data: TrainData, limit: int | None = None) -> None:
        """``limit``: bytes of rungs held in memory (None: :func:`memory_budget`); above it, rows are read per call."""
        self.data = data
        reader = data.reader
        self.states = None
        if reader.rungs_nbytes(len(data.positions)) <= (memory_budget() if limit is None else limit):
            states = reader.read_all(rungs=data.positions)  # (N, S, H) as read (fp16; int8 dequantized), used rungs only
            states = states if states.flags.writeable else states.copy()
            self.states = torch.from_numpy(states)
            step = 1 << 16  # check in slices: a whole-array isfinite would add half the array's size
            if not all(torch.isfinite(self.states[i : i + step]).all() for i in range(0, len(self.states), step)):
                raise InputError(f"cache {data.cache_path}: holds non-finite values; re-encode with fp32 storage")

    def __call__(self, nodes: torch.Tensor) -> torch.Tensor:
        if self.states is not None:
            return self.states[nodes].float()
        # out of memory: read the unique rows in index order (chunk order), then scatter back
        uniq, inverse = torch.unique(nodes, return_inverse=True)
        rows = self.data.reader.read(nodes=uniq.numpy(), rungs=self.data.positions)
        return torch.from_numpy(np.asarray(rows)).float()[inverse]


class LiveFeatures:
    """``--no-cache``: encode the batch's node texts with the frozen LLM, every call.

    Uses the cache manifest's model, pooling and max length, and stage 1's ``LayerStepper``
    (the code path that wrote the cache). Texts are length-sorted into small groups so
    padding stays low, as ``pipeline encode`` does.
    """

    orders_batches = False

    def __init__(self, data: TrainData, device: str = "cpu", dtype: str = "float32", group_size: int = 32) -> None:
        from stage1_encode.models import load_model, resolve_model
        from stage1_encode.stepping import LayerStepper

        m = data.manifest
        self.data, self.group_size = data, group_size
        self.pooling, self.max_length = m["pooling"], int(m["max_length"])
        model = m["model"]
        self.storage_dtype = m["storage_dtype"]
        self.stepper = LayerStepper(load_model(resolve_model(str(model)), device=device, dtype=getattr(torch, dtype)))

    def __call__(self, nodes: torch.Tensor) -> torch.Tensor:
        uniq, inverse = torch.unique(nodes, return_inverse=True)  # encode each text once per batch
        texts = [self.data.graph.texts[i] for i in uniq.tolist()]
        order = sorted(range(len(texts)), key=lambda j: len(texts[j]))
        out = torch.empty(len(texts), len(self.data.layers), self.stepper.hidden_size)  # (u, S, H)
        for a in range(0, len(order), self.group_size):
            idx = order[a : a + self.group_size]
            states = self.stepper.encode_batch([texts[j] for j in idx], self.data.layers, self.pooling, self.max_length)
            out[idx] = states.float().cpu()
        from stage1_encode.cache.quantize import round_like_storage

        return round_like_storage(out, self.storage_dtype)[inverse]  # as the cache gives them back
