"""The in-memory text graph every stage works on, and how to load one.

A graph is given as a built-in name (``cora``, ``citeseer``) or a folder holding
``nodes.parquet`` and ``edges.parquet`` (docs/design.md section 3). Optional files in the same
folder: ``meta.json`` (``label_names`` order, provenance) and ``splits/NAME.json``
(``{"train": [node_id, ...], "val": [...], "test": [...]}``, user ids).

Internally nodes get dense indices 0..N-1 in file order; ``node_ids`` maps them back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.core.errors import InputError

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class TextGraph:
    """A validated textual graph.

    Shapes: N nodes, E undirected edges (each stored in both directions in ``edge_index``).
    """

    name: str  # built-in name or folder name
    source: str  # built-in name or absolute folder path: what `load_graph` accepts again
    node_ids: np.ndarray  # (N,) int64 or object (str): the user's ids, by dense index
    texts: Sequence[str]  # (N,) a TextColumn (Arrow-backed, lazy for large files) or a list
    labels: np.ndarray  # (N,) int64 class index, -1 = unlabeled
    label_names: list[str]  # (C,) class index -> name
    split: np.ndarray  # (N,) object: "train" / "val" / "test" / None, from the split column
    edge_index: np.ndarray  # (2, 2E) int64 dense indices, symmetric, no self-loops or duplicates
    named_splits: dict[str, Path] = field(default_factory=dict)  # name -> splits/NAME.json
    fingerprint: str = ""  # graph_fingerprint: sha256 over ids, texts, labels, splits and edges
    meta: dict = field(default_factory=dict)

    @property
    def num_nodes(self) -> int:
        return len(self.texts)

    @property
    def num_edges(self) -> int:
        """Undirected edge count."""
        return self.edge_index.shape[1] // 2

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def id_kind(self) -> str:
        """``"int"`` or ``"string"``: the kind of the user's node ids (graph_format.id_kind's names)."""
        return "string" if self.node_ids.dtype == object else "int"

    def index_of(self, ids: list | np.ndarray) -> np.ndarray:
        """Dense indices of user ids; unknown ids raise InputError naming them."""
        lookup = {v: i for i, v in enumerate(self.node_ids.tolist())}
        out, missing = [], []
        for v in ids:
            i = lookup.get(v)
            if i is None:
                missing.append(v)
            else:
                out.append(i)
        if missing:
            raise InputError(f"{len(missing)} node id(s) not in graph '{self.name}', first: {missing[:5]}")
        return np.asarray(out, dtype=np.int64)

    def split_indices(self, name: str | None = None) -> dict[str, np.ndarray]:
        """``{"train", "val", "test"} -> dense indices`` for a named split or the split column."""
        if name is None or name == "column":
            if not any(s is not None for s in self.split):
                raise InputError(f"graph '{self.name}' has no split column; choose a split with --split")
            return {s: np.flatnonzero(self.split == s) for s in SPLIT_NAMES}
        if name not in self.named_splits:
            known = ", ".join(sorted(self.named_splits)) or "none"
            raise InputError(f"--split {name}: graph '{self.name}' has no such split (known: {known})")
        data = json.loads(self.named_splits[name].read_text())
        return {s: self.index_of(data.get(s, [])) for s in SPLIT_NAMES}


FINGERPRINT_VERSION = 2  # 2: hashes Arrow/numpy buffers (1: a JSON dump; caches from 1 no longer match)
SPLIT_CODES = {None: -1, "train": 0, "val": 1, "test": 2}


def graph_fingerprint(node_ids, texts, labels, split, edge_index) -> str:
    """sha256 (hex) over ids, texts, labels, split and edges, hashed from their buffers.

    Texts may be a :class:`TextColumn` (its block-independent digest) or a list of str.
    """
    import pyarrow as pa

    from pipeline.core.text_column import LIST_CHUNK, TextColumn, strings_digest

    node_ids = np.asarray(node_ids)
    h = hashlib.sha256(f"textgraph-fingerprint/{FINGERPRINT_VERSION}".encode())
    h.update(np.int64(len(node_ids)).tobytes())
    if node_ids.dtype.kind in "iu":
        h.update(b"int-ids" + node_ids.astype(np.int64).tobytes())
    else:
        ids = [str(v) for v in node_ids.tolist()]
        h.update(b"string-ids" + strings_digest(pa.array(ids[a : a + LIST_CHUNK], pa.string()) for a in range(0, len(ids), LIST_CHUNK)))
    if isinstance(texts, TextColumn):
        h.update(b"texts" + texts.digest())
    else:
        texts = list(texts)
        h.update(b"texts" + strings_digest(pa.array(texts[a : a + LIST_CHUNK], pa.string()) for a in range(0, len(texts), LIST_CHUNK)))
    h.update(b"labels" + np.asarray(labels, dtype=np.int64).tobytes())
    split = np.asarray(split, dtype=object)
    codes = np.full(len(split), -1, dtype=np.int8)
    for name in SPLIT_NAMES:
        codes[split == name] = SPLIT_CODES[name]
    h.update(b"split" + codes.tobytes())
    h.update(b"edges" + np.ascontiguousarray(edge_index, dtype=np.int64).tobytes())
    return h.hexdigest()


def load_graph(spec: str | Path) -> TextGraph:
    """Load a built-in dataset by name or a graph folder; invalid input raises InputError."""
    from pipeline.core.builtin_datasets import builtin_path  # local: datasets imports this module
    from pipeline.core.graph_format import read_graph_folder

    path = builtin_path(str(spec))
    if path is not None:
        return read_graph_folder(path, name=str(spec), source=str(spec))
    folder = Path(spec)
    if not folder.exists():
        from pipeline.core.builtin_datasets import BUILTINS

        raise InputError(
            f"graph '{spec}': not a built-in dataset ({', '.join(BUILTINS)}) and no such folder"
        )
    return read_graph_folder(folder, name=folder.resolve().name, source=str(folder.resolve()))
