"""Two versions of a graph, as a growing graph's batch job sees them (incremental-update benchmarks and recipe).

    python scripts/make_graph_versions.py GRAPH OUT [--added 0.02] [--edited 0.01] [--seed 0] [--split NAME]

``OUT/v1``: GRAPH without a random ``--added`` fraction of its nodes (and their edges).
``OUT/v2``: all of GRAPH, where a random ``--edited`` fraction of the v1 nodes (a fraction of
GRAPH's node count) have a revised text ("Revised. " in front, so the first tokens change).
So v1 -> v2 adds ``added`` of the nodes and edits ``edited`` of the texts. Both carry a split
column: GRAPH's, else the named split ``--split`` (default ``random_60_20_20_seed0`` when
GRAPH has it); named split files are not copied (they would name v2's new nodes in v1).
Node ids, labels and edge order are GRAPH's; the result depends only on GRAPH and ``--seed``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.core.graph import load_graph
from pipeline.core.graph_format import write_graph_folder

REVISED = "Revised. "


def make_versions(graph_spec: str, out: Path, added: float = 0.02, edited: float = 0.01, seed: int = 0,
                  split: str | None = None) -> tuple[Path, Path]:
    """Write ``out/v1`` and ``out/v2`` (see the module docstring); returns both folders."""
    graph = load_graph(graph_spec)
    n = graph.num_nodes
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    held = np.sort(order[: round(added * n)])  # in v2 only
    edit = np.sort(order[round(added * n) : round(added * n) + round(edited * n)])  # texts revised in v2
    split_column = np.asarray(graph.split, dtype=object)
    if not any(s is not None for s in split_column):
        name = split or ("random_60_20_20_seed0" if "random_60_20_20_seed0" in graph.named_splits else None)
        if name is None:
            raise SystemExit(f"{graph_spec}: no split column and no --split NAME to make one from")
        split_column = np.full(n, None, dtype=object)
        for part, rows in graph.split_indices(name).items():
            split_column[rows] = part
    names = np.asarray(graph.label_names + [None], dtype=object)  # label -1 -> None
    ids = graph.node_ids
    id_type = pa.int64() if ids.dtype.kind in "iu" else pa.string()
    texts = list(graph.texts)
    src, dst = graph.edge_index
    once = src < dst

    def write(folder: Path, keep: np.ndarray, revised: np.ndarray) -> Path:
        text = [REVISED + texts[i] if revised[i] else texts[i] for i in np.flatnonzero(keep).tolist()]
        nodes = pa.table({
            "node_id": pa.array(ids[keep].tolist(), id_type),
            "text": pa.array(text, pa.string()),
            "label": pa.array(names[np.asarray(graph.labels)[keep]].tolist(), pa.string()),
            "split": pa.array(split_column[keep].tolist(), pa.string()),
        })
        e = once & keep[src] & keep[dst]
        edges = pa.table({"src": pa.array(ids[src[e]].tolist(), id_type), "dst": pa.array(ids[dst[e]].tolist(), id_type)})
        write_graph_folder(folder, nodes, edges, meta={"label_names": list(graph.label_names), "derived_from": graph.source})
        return folder

    keep_v1 = np.ones(n, dtype=bool)
    keep_v1[held] = False
    revised = np.zeros(n, dtype=bool)
    revised[edit] = True
    out = Path(out)
    v1 = write(out / "v1", keep_v1, np.zeros(n, dtype=bool))
    v2 = write(out / "v2", np.ones(n, dtype=bool), revised)
    print(f"{v1}: {int(keep_v1.sum())} nodes; {v2}: {n} nodes ({len(held)} added, {len(edit)} texts edited)")
    return v1, v2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("graph", help="built-in name or graph folder")
    p.add_argument("out", type=Path, help="folder for v1/ and v2/ (must not exist)")
    p.add_argument("--added", type=float, default=0.02, help="fraction of nodes new in v2 (default 0.02)")
    p.add_argument("--edited", type=float, default=0.01, help="fraction of nodes whose text v2 revises (default 0.01)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default=None, help="named split that becomes the split column (when GRAPH has none)")
    a = p.parse_args()
    make_versions(a.graph, a.out, a.added, a.edited, a.seed, a.split)


if __name__ == "__main__":
    main()
