"""Which nodes to predict, on which graph: the training graph, optionally grown by new nodes.

New nodes (``--nodes new.parquet --edges new_edges.parquet``) use the input format of
docs/design.md section 3; their edges may join new nodes to each other and to nodes of the
training graph. They are appended after the N known nodes (indices N..N+M-1), so the cache,
which covers 0..N-1, still answers for every known node. The graph format checks them
(:func:`pipeline.core.graph_format.read_new_nodes`, every problem at once, exit status 2): besides
the format's own checks, new ids that collide with known ones, edges to ids that are neither,
ids of another type than the graph's.

Shapes: N known nodes, M new nodes, E edges.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.core.errors import InputError
from pipeline.core.graph import TextGraph, graph_fingerprint
from pipeline.core.graph_format import FIRST_ROWS, read_new_nodes
from pipeline.core.parsers import is_whole_number
from pipeline.core.progress import warn

CLASH_HINT = "; give new nodes unused ids (predict known nodes with --node-ids or --split)"


@dataclass
class InferGraph:
    """The graph inference runs on; ``num_known`` first nodes are the training graph's."""

    graph: TextGraph  # N + M nodes; labels are indices into the checkpoint's label names
    num_known: int  # N: nodes covered by the cache

    def is_new(self, index: np.ndarray) -> np.ndarray:
        return np.asarray(index) >= self.num_known


def add_new_nodes(graph: TextGraph, nodes_path: Path, edges_path: Path, label_names: list[str]) -> InferGraph:
    """Append the new nodes and their edges to ``graph``, checked by the graph format
    (problems reported together); their labels are matched to the checkpoint's classes."""
    new = read_new_nodes(graph, Path(nodes_path), Path(edges_path), clash_hint=CLASH_HINT)
    index = {name: i for i, name in enumerate(label_names)}
    new_labels = np.array([-1 if v is None else index.get(str(v), -1) for v in new.labels], dtype=np.int64)
    unknown = sorted({str(v) for v, y in zip(new.labels, new_labels) if v is not None and y < 0})
    if unknown:
        warn(f"{nodes_path}: label(s) {unknown[:FIRST_ROWS]} are not classes of the checkpoint ({', '.join(label_names)}); "
             "those nodes count as unlabelled")
    all_ids = np.concatenate([graph.node_ids, new.ids])
    all_texts = list(graph.texts) + list(new.texts)
    all_labels = np.concatenate([np.asarray(graph.labels), new_labels])
    all_split = np.concatenate([graph.split, np.full(len(new.ids), None, dtype=object)])  # new nodes are only predicted
    grown = replace(
        graph, node_ids=all_ids, texts=all_texts, labels=all_labels, split=all_split, edge_index=new.edge_index,
        fingerprint=graph_fingerprint(all_ids, all_texts, all_labels, all_split, new.edge_index),  # the version predicted on
    )
    return InferGraph(grown, graph.num_nodes)


def read_node_ids(path: Path, graph: TextGraph) -> np.ndarray:
    """A text file of user ids, one a line (blank lines and ``#`` comments skipped; a UTF-8 byte
    order mark allowed) -> indices in the file's order, each id once (a repeated id is predicted
    once, with a warning: predictions hold one row a node)."""
    try:
        lines = [ln.strip() for ln in Path(path).read_bytes().decode("utf-8-sig").splitlines()]
    except UnicodeDecodeError as err:
        raise InputError(f"--node-ids {path}: not UTF-8 text (byte {err.start}); one node id a line") from None
    raw = [ln for ln in lines if ln and not ln.startswith("#")]
    if not raw:
        raise InputError(f"--node-ids {path}: no node ids in the file (one id a line)")
    ids: list = raw
    if graph.id_kind == "int":
        bad = [v for v in raw if not is_whole_number(v)]
        if bad:
            raise InputError(f"--node-ids {path}: graph '{graph.name}' has integer ids; not integers: {bad[:FIRST_ROWS]}")
        ids = [int(v) for v in raw]
    try:
        indices = graph.index_of(ids)
    except InputError as err:
        raise InputError(f"--node-ids {path}: {err.message}") from None
    _, first = np.unique(indices, return_index=True)
    if len(first) < len(indices):
        repeated = [v for v, n in Counter(ids).items() if n > 1]
        warn(f"--node-ids {path}: {len(repeated)} id(s) listed more than once, each predicted once; first: {repeated[:FIRST_ROWS]}")
    return indices[np.sort(first)]


def ids_of(since: Path) -> np.ndarray:
    """Node ids an earlier version covered: those of an encode cache, or of the cache a training run read."""
    from stage1_encode.cache.manifest import MANIFEST_FILE
    from stage1_encode.cache.reader import open_cache
    from stage2_train.checkpoint import SUMMARY, read_checked_run

    since = Path(since)
    cache = since
    if (since / SUMMARY).is_file():  # a training run: the cache it read
        cache = Path(read_checked_run(since).config["cache"])
        if not (cache / MANIFEST_FILE).is_file():
            raise InputError(f"--new-only {since}: the run's cache {cache} is gone; give an encode cache of that version instead")
    elif not (since / MANIFEST_FILE).is_file():
        raise InputError(f"--new-only {since}: neither an encode cache nor a training run folder")
    return open_cache(cache).node_ids


def new_since(graph: TextGraph, since: Path) -> np.ndarray:
    """Dense indices (sorted) of the nodes of ``graph`` whose ids ``since`` (a cache or run) does not hold."""
    from stage1_encode.reuse import match_rows

    return np.flatnonzero(match_rows(ids_of(since), graph.node_ids) < 0)


def select_targets(g: InferGraph, split_spec: str | None, node_ids: Path | None, train_split: str | None, seed: int,
                   new_only: Path | None = None) -> np.ndarray:
    """Dense indices of the targets, in a stable order (sorted, as training evaluates them)."""
    graph = g.graph
    if node_ids is not None:
        return read_node_ids(node_ids, graph)
    if new_only is not None:
        return new_since(graph, new_only)
    if split_spec is None and g.num_known < graph.num_nodes:
        return np.arange(g.num_known, graph.num_nodes)
    split_spec = split_spec or "test"
    if split_spec == "all":
        return np.arange(graph.num_nodes)
    from stage2_train.data import resolve_split

    # the known graph's split; slicing only when new nodes were added (a slice copies the texts)
    known = graph if g.num_known == graph.num_nodes else replace(
        graph, node_ids=graph.node_ids[: g.num_known], texts=graph.texts[: g.num_known],
        labels=graph.labels[: g.num_known], split=graph.split[: g.num_known])
    targets = resolve_split(known, train_split, seed)[split_spec]
    if len(targets) == 0:
        raise InputError(f"--split {split_spec}: no labelled nodes in that split of graph '{graph.name}'; to predict "
                         "unlabelled nodes, pass --split all or --node-ids FILE")
    return targets
