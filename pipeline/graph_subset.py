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
from typing import Callable

import numpy as np
import pyarrow as pa

from pipeline.core.builtin_datasets import builtin_path
from pipeline.core.errors import ConfigErrors, InputError
from pipeline.core.graph import TextGraph, load_graph
from pipeline.core.graph_format import check_output_folder, graph_edges_table, read_nodes_table, write_graph_folder
from pipeline.core.options import option, seed_option
from pipeline.core.progress import log
from pipeline.graph_options import flags_file, graph_argument, graph_overwrite_option, out_argument
from pipeline.graph_summary import connected_components

# Statistics in meta.json that describe the whole graph; a subset drops or recomputes them.
STALE_META_KEYS = ("name", "num_nodes", "num_undirected_edges", "num_classes", "class_counts", "text_chars",
                   "isolated_nodes", "edge_homophily", "splits", "sha256")


@dataclasses.dataclass
class SubsetConfig:
    """Settings of ``pipeline datasets subset``."""

    graph: str = graph_argument()
    out: Path = out_argument()
    nodes: int = option(help="Number of nodes to keep.", show_default=False)
    seed: int = seed_option(0, "Seed choosing the start node.")
    overwrite: bool = graph_overwrite_option()

    def validate(self) -> None:
        """Raise one InputError listing every problem the flags alone show, each naming its flag."""
        errors = ConfigErrors()
        errors.check(self.nodes >= 1, f"--nodes {self.nodes}: must be at least 1")
        errors.raise_if_any()


def run_subset(config: SubsetConfig) -> None:
    """``pipeline datasets subset``: the subgraph folder, with the flags that made it."""
    config.validate()
    check_output_folder(config.out, config.overwrite, inputs=[builtin_path(config.graph) or Path(config.graph)])
    full = load_graph(config.graph)
    keep, start = bfs_subset(full, config.nodes, config.seed)
    start_id = full.node_ids[start].item() if hasattr(full.node_ids[start], "item") else full.node_ids[start]
    provenance = {"graph": full.source, "fingerprint": full.fingerprint, "nodes": config.nodes, "seed": config.seed,
                  "start_node_id": start_id}
    sub = write_subset(
        full, read_nodes_table(full), keep, config.out,
        provenance=provenance, extra_files=flags_file("datasets_subset", config), overwrite=config.overwrite,
    )
    log(f"subset of '{full.name}': {sub.num_nodes} nodes, {sub.num_edges} edges, start node {start_id!r} -> {config.out}")


def bfs_subset(graph: TextGraph, num_nodes: int, seed: int) -> tuple[np.ndarray, int]:
    """(sorted dense indices of the kept nodes, dense index of the start node); ``num_nodes``
    is at least 1 (:meth:`SubsetConfig.validate`)."""
    n = graph.num_nodes
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
    extra_files: dict[str, str | Callable[[Path], None]] | None = None,
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
