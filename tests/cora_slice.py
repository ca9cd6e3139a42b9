"""A small connected slice of the built-in Cora graph, written as a graph folder, and its
encode with the small real model (test helpers; tests/conftest.py shares them per session)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.core.graph import load_graph
from pipeline.core.graph_format import write_graph_folder


def write_cora_slice(folder: Path, n: int, texts_suffix: str = "") -> Path:
    """The first ``n`` nodes reached breadth-first from node 0, with their induced edges and a
    split column (train/val/test by position: 3/1/1 of every 5); ``texts_suffix`` edits texts."""
    cora = load_graph("cora")
    ptr = np.zeros(cora.num_nodes + 1, dtype=np.int64)
    np.cumsum(np.bincount(cora.edge_index[0], minlength=cora.num_nodes), out=ptr[1:])
    seen, order = {0}, [0]
    for u in order:  # grows while iterating: a queue
        for v in cora.edge_index[1, ptr[u] : ptr[u + 1]].tolist():
            if v not in seen and len(seen) < n:
                seen.add(v)
                order.append(v)
        if len(seen) >= n:
            break
    keep = np.array(sorted(seen))
    assert len(keep) == n
    nodes = pa.table({
        "node_id": pa.array(cora.node_ids[keep], pa.int64()),
        "text": [cora.texts[i] + texts_suffix for i in keep],
        "label": [cora.label_names[cora.labels[i]] for i in keep],
        "split": ["train" if i % 5 < 3 else ("val" if i % 5 == 3 else "test") for i in range(len(keep))],
    })
    src, dst = cora.edge_index
    mask = np.isin(src, keep) & np.isin(dst, keep) & (src < dst)
    edges = pa.table({"src": pa.array(cora.node_ids[src[mask]], pa.int64()), "dst": pa.array(cora.node_ids[dst[mask]], pa.int64())})
    return write_graph_folder(folder, nodes, edges, meta={"label_names": list(cora.label_names)})


ENCODE_DEFAULTS = {"model": "minilm-l6", "device": "cpu"}  # the small real model, on the CPU on every machine


def encode_slice(graph: Path, out: Path, **settings) -> Path:
    """``pipeline encode`` of a graph folder with ``ENCODE_DEFAULTS`` and ``settings`` (other
    EncodeConfig fields); returns the cache path."""
    from stage1_encode.config import EncodeConfig
    from stage1_encode.run import run

    return run(EncodeConfig(graph=str(graph), out=out, **{**ENCODE_DEFAULTS, **settings}))


# The growing graph of the nightly tests (the ``nights`` fixture of tests/conftest.py); test_finetune.py
# encodes its 40-node v1 with the same settings, so one encode serves both.
NIGHT_SETTINGS = dict(max_length=16, block_size=8, batch_tokens=128, storage_dtype="float32")
NIGHT_TRAIN = dict(epochs=2, patience=2, batch_size=16, hidden_channels=32, dropout=0.0, lr=3e-3, num_threads=1)
