"""Summary statistics of a text graph (``pipeline datasets check``), as plain JSON-able data.

Edge homophily: among undirected edges whose two ends are both labeled, the fraction whose
ends share the label (null when no edge has two labeled ends).
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core import ownership
from pipeline.core.builtin_datasets import builtin_path
from pipeline.core.graph import SPLIT_NAMES, TextGraph, load_graph
from pipeline.core.options import flag_values, json_option
from pipeline.graph_options import graph_argument

TEXT_PERCENTILES = (0, 5, 25, 50, 75, 95, 100)
FIRST_IDS = 10  # user ids quoted for e.g. isolated nodes


@dataclass
class CheckConfig:
    """Settings of ``pipeline datasets check``."""

    graph: str = graph_argument()
    json_path: Path | None = json_option("the summary (and this command's resolved configuration)")


def run_check(config: CheckConfig) -> None:
    """``pipeline datasets check``: validate the graph, print its summary, and write it to
    ``--json`` with the flags that made it."""
    from rich.console import Console

    command = "pipeline datasets check"
    if config.json_path is not None:  # claimed before the (slow) read, so a bad path fails at once
        ownership.claim_file(config.json_path, "--json", command, inputs=[builtin_path(config.graph) or Path(config.graph)])
    summary = summarize(load_graph(config.graph))
    Console().print(summary_table(summary))
    if config.json_path is not None:
        ownership.write_json_output(config.json_path, {**summary, "config": flag_values(config)}, command)


def _plain_id(v):
    return v.item() if hasattr(v, "item") else v


def connected_components(num_nodes: int, edge_index: np.ndarray) -> np.ndarray:
    """(N,) component number per node, numbered by first node in index order."""
    order = np.argsort(edge_index[0], kind="stable")
    dst = edge_index[1][order]
    ptr = np.zeros(num_nodes + 1, dtype=np.int64)
    np.cumsum(np.bincount(edge_index[0], minlength=num_nodes), out=ptr[1:])
    comp = np.full(num_nodes, -1, dtype=np.int64)
    ptr_l, dst_l = ptr.tolist(), dst.tolist()
    c = 0
    for start in range(num_nodes):
        if comp[start] >= 0:
            continue
        comp[start] = c
        queue = deque([start])
        while queue:
            u = queue.popleft()
            for v in dst_l[ptr_l[u] : ptr_l[u + 1]]:
                if comp[v] < 0:
                    comp[v] = c
                    queue.append(v)
        c += 1
    return comp


def summarize(graph: TextGraph) -> dict:
    """Counts, label counts, split sizes, text length percentiles, homophily, isolated nodes."""
    n, ei = graph.num_nodes, graph.edge_index
    degree = np.bincount(ei[0], minlength=n)
    isolated = np.flatnonzero(degree == 0)
    comp = connected_components(n, ei)
    comp_sizes = np.bincount(comp) if n else np.zeros(0, dtype=np.int64)

    labels = graph.labels
    labeled = labels >= 0
    label_counts = {name: int((labels == i).sum()) for i, name in enumerate(graph.label_names)}
    src, dst = ei[0][ei[0] < ei[1]], ei[1][ei[0] < ei[1]]
    both = labeled[src] & labeled[dst]
    homophily = float((labels[src][both] == labels[dst][both]).mean()) if both.any() else None

    lengths = np.array([len(t) for t in graph.texts], dtype=np.int64)
    text_chars = {f"p{p}": float(np.percentile(lengths, p)) for p in TEXT_PERCENTILES}
    text_chars["mean"] = float(lengths.mean())

    split_column = None
    if any(s is not None for s in graph.split):
        split_column = {s: int((graph.split == s).sum()) for s in SPLIT_NAMES}
        split_column["none"] = int(sum(s is None for s in graph.split))
    named = {}
    for name in sorted(graph.named_splits):  # validated when the graph was read
        data = json.loads(graph.named_splits[name].read_text())
        named[name] = {part: len(data.get(part, [])) for part in SPLIT_NAMES}

    return {
        "name": graph.name,
        "source": graph.source,
        "fingerprint": graph.fingerprint,
        "id_type": "int" if graph.node_ids.dtype.kind in "iu" else "string",
        "nodes": n,
        "edges": graph.num_edges,
        "mean_degree": float(degree.mean()) if n else 0.0,
        "classes": graph.num_classes,
        "labeled_nodes": int(labeled.sum()),
        "label_counts": label_counts,
        "split_column": split_column,
        "named_splits": named,
        "text_chars": text_chars,
        "edge_homophily": None if homophily is None else round(homophily, 4),
        "isolated_nodes": int(len(isolated)),
        "isolated_node_ids": [_plain_id(v) for v in graph.node_ids[isolated[:FIRST_IDS]]],
        "connected_components": int(len(comp_sizes)),
        "largest_component": int(comp_sizes.max()) if n else 0,
    }


def summary_table(summary: dict):
    """A rich table of :func:`summarize`'s result."""
    from rich.table import Table

    table = Table(title=f"Graph '{summary['name']}'", show_header=True)
    table.add_column("statistic")
    table.add_column("value", overflow="fold")
    add = table.add_row
    add("source", summary["source"])
    add("fingerprint", summary["fingerprint"][:16])
    add("id type", summary["id_type"])
    add("nodes", str(summary["nodes"]))
    add("edges (undirected)", str(summary["edges"]))
    add("mean degree", f"{summary['mean_degree']:.2f}")
    add("isolated nodes", str(summary["isolated_nodes"]) + (f"  (first: {summary['isolated_node_ids']})" if summary["isolated_nodes"] else ""))
    add("connected components", f"{summary['connected_components']} (largest: {summary['largest_component']} nodes)")
    add("classes", str(summary["classes"]))
    add("labeled nodes", str(summary["labeled_nodes"]))
    for name, count in summary["label_counts"].items():
        add(f"  label {name}", str(count))
    h = summary["edge_homophily"]
    add("edge homophily", "n/a (no edge with two labeled ends)" if h is None else f"{h:.4f}")
    t = summary["text_chars"]
    add("text chars p0/p5/p25/p50/p75/p95/p100", "/".join(f"{t[f'p{p}']:.0f}" for p in TEXT_PERCENTILES))
    add("text chars mean", f"{t['mean']:.1f}")
    if summary["split_column"]:
        s = summary["split_column"]
        add("split column train/val/test/none", f"{s['train']}/{s['val']}/{s['test']}/{s['none']}")
    for name, sizes in summary["named_splits"].items():
        add(f"split {name} train/val/test", f"{sizes['train']}/{sizes['val']}/{sizes['test']}")
    return table
