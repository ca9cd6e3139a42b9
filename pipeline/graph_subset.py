"""Connected induced subgraphs for quick trial runs (``pipeline datasets subset``).

Deterministic: the start node is drawn with ``numpy.random.default_rng(seed)`` among the
nodes whose connected component has at least N nodes, and the breadth-first search visits
neighbours in node order (file order). The first N nodes reached are kept; every prefix of
a BFS order is connected, so the induced subgraph is connected. Rows keep the original
file order; labels, the split column, meta.json's label order and named splits (restricted
to the kept nodes) are kept.
"""

from __future__ import annotations

import dataclasses
import json
from collections import deque
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.core.errors import InputError
from pipeline.core.graph import TextGraph
from pipeline.core.graph_format import graph_edges_table, write_graph_folder
from pipeline.graph_summary import connected_components

# Statistics in meta.json that describe the whole graph; a subset drops or recomputes them.
STALE_META_KEYS = ("name", "num_nodes", "num_undirected_edges", "num_classes", "class_counts", "text_chars",
                   "isolated_nodes", "edge_homophily", "splits", "sha256")


def bfs_subset(graph: TextGraph, num_nodes: int, seed: int) -> tuple[np.ndarray, int]:
    """(sorted dense indices of the kept nodes, dense index of the start node)."""
    n = graph.num_nodes
    if num_nodes < 1:
        raise InputError(f"--nodes {num_nodes}: must be at least 1")
    if num_nodes > n:
        raise InputError(f"--nodes {num_nodes}: graph '{graph.name}' has only {n} nodes")
    ei = graph.edge_index
    comp = connected_components(n, ei)
    sizes = np.bincount(comp)
    candidates = np.flatnonzero(sizes[comp] >= num_nodes)
    if len(candidates) == 0:
        raise InputError(
            f"--nodes {num_nodes}: graph '{graph.name}' has no connected component that large "
            f"(largest: {int(sizes.max())} nodes)"
        )
    start = int(candidates[np.random.default_rng(seed).integers(len(candidates))])
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(ei[0], minlength=n), out=ptr[1:])
    dst = ei[1].tolist()  # edge_index is sorted by (src, dst): neighbours in node order
    ptr_l = ptr.tolist()
    seen = {start}
    order = [start]
    queue = deque([start])
    while queue and len(order) < num_nodes:
        u = queue.popleft()
        for v in dst[ptr_l[u] : ptr_l[u + 1]]:
            if v not in seen:
                seen.add(v)
                order.append(v)
                queue.append(v)
                if len(order) == num_nodes:
                    break
    return np.sort(np.asarray(order, dtype=np.int64)), start


def write_subset(
    graph: TextGraph,
    nodes_table: pa.Table,
    keep: np.ndarray,
    out: Path,
    *,
    provenance: dict,
    extra_files: dict[str, str] | None = None,
    overwrite: bool = False,
) -> TextGraph:
    """Write the subgraph induced by dense indices ``keep`` (sorted) to ``out``.

    ``nodes_table`` is the graph's own nodes table (rows in dense-index order), so every
    column keeps its type and values; edges are the graph's cleaned undirected edges.
    """
    nodes = nodes_table.take(pa.array(keep))
    kept = np.zeros(graph.num_nodes, dtype=bool)
    kept[keep] = True
    sub_ei = graph.edge_index[:, kept[graph.edge_index[0]] & kept[graph.edge_index[1]]]
    id_type = nodes.schema.field("node_id").type
    edges_all = graph_edges_table(_with_edges(graph, sub_ei), id_type)

    kept_ids = set(graph.node_ids[keep].tolist())
    splits = {}
    for name in sorted(graph.named_splits):
        data = json.loads(graph.named_splits[name].read_text())
        splits[name] = {part: [v for v in ids if v in kept_ids] for part, ids in data.items()}

    meta = {k: v for k, v in graph.meta.items() if k not in STALE_META_KEYS}
    if graph.label_names:
        meta["label_names"] = list(graph.label_names)  # keeps class indices of the full graph
    meta["subset_of"] = provenance
    return write_graph_folder(
        out, nodes, edges_all, meta=meta, splits=splits, extra_files=extra_files, overwrite=overwrite
    )


def _with_edges(graph: TextGraph, edge_index: np.ndarray) -> TextGraph:
    return dataclasses.replace(graph, edge_index=edge_index)
