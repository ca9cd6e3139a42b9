"""The text-graph input format: read ``nodes.parquet`` + ``edges.parquet`` and validate.

Every problem is collected and reported together, each naming file, column and the first
offending rows; nothing is written by a command whose input fails here (exit status 2).
Self-loops and duplicate edges are dropped with a warning.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import InputError
from pipeline.graph import SPLIT_NAMES, TextGraph, graph_fingerprint
from pipeline.progress import warn

NODES_FILE, EDGES_FILE = "nodes.parquet", "edges.parquet"
FIRST_ROWS = 5  # offending rows quoted per problem


def _rows(mask: np.ndarray) -> str:
    rows = np.flatnonzero(mask)[:FIRST_ROWS].tolist()
    more = f" (+{int(mask.sum()) - len(rows)} more)" if mask.sum() > len(rows) else ""
    return f"rows {rows}{more}"


def _id_kind(arrow_type: pa.DataType) -> str | None:
    if pa.types.is_integer(arrow_type):
        return "int"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    return None


def _read_table(path: Path, problems: list[str]) -> pa.Table | None:
    if not path.is_file():
        problems.append(f"{path}: file not found (a graph folder needs {NODES_FILE} and {EDGES_FILE})")
        return None
    try:
        return pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for corrupt files
        problems.append(f"{path}: not a readable Parquet file ({err})")
        return None


def _check_nodes(nodes: pa.Table, f: str, problems: list[str]):
    """Returns (node_ids, texts, raw_labels or None, split) or None when unusable."""
    cols = set(nodes.column_names)
    for required in ("node_id", "text"):
        if required not in cols:
            problems.append(f"{f}: missing column '{required}' (columns: {sorted(cols)})")
    if not {"node_id", "text"} <= cols:
        return None
    n = nodes.num_rows
    ids_col = nodes.column("node_id")
    kind = _id_kind(ids_col.type)
    ok = True
    if kind is None:
        problems.append(f"{f}: column 'node_id' has type {ids_col.type}; expected int64 or string")
        ok = False
    ids = np.asarray(ids_col.to_pylist(), dtype=object)
    null_ids = np.array([v is None for v in ids], dtype=bool)
    if null_ids.any():
        problems.append(f"{f}: column 'node_id' has {int(null_ids.sum())} null value(s) at {_rows(null_ids)}")
        ok = False
    if kind is not None and not null_ids.any():
        _, first, counts = np.unique(ids.astype(str) if kind == "string" else ids.astype(np.int64),
                                     return_index=True, return_counts=True)
        dup = np.ones(n, dtype=bool)
        dup[first] = False
        if dup.any():
            problems.append(f"{f}: column 'node_id' has duplicate ids at {_rows(dup)}, first: {ids[dup][:FIRST_ROWS].tolist()}")
            ok = False

    text_col = nodes.column("text")
    texts = text_col.to_pylist()
    if not (pa.types.is_string(text_col.type) or pa.types.is_large_string(text_col.type)):
        problems.append(f"{f}: column 'text' has type {text_col.type}; expected string")
        ok = False
    else:
        bad_text = np.array([t is None or not t.strip() for t in texts], dtype=bool)
        if bad_text.any():
            problems.append(f"{f}: column 'text' has null or empty text at {_rows(bad_text)}")
            ok = False

    labels = None
    if "label" in cols:
        lcol = nodes.column("label")
        if not (_id_kind(lcol.type) or pa.types.is_null(lcol.type)):
            problems.append(f"{f}: column 'label' has type {lcol.type}; expected string or integer (null = unlabeled)")
            ok = False
        else:
            labels = lcol.to_pylist()

    split = np.full(n, None, dtype=object)
    if "split" in cols:
        values = nodes.column("split").to_pylist()
        bad = np.array([v is not None and v not in SPLIT_NAMES for v in values], dtype=bool)
        if bad.any():
            problems.append(
                f"{f}: column 'split' has unknown values {sorted({str(v) for v in np.asarray(values, dtype=object)[bad]})} "
                f"at {_rows(bad)}; allowed: train, val, test or null"
            )
            ok = False
        else:
            split = np.asarray(values, dtype=object)
    if not ok:
        return None
    ids = ids.astype(np.int64) if kind == "int" else ids
    return ids, kind, texts, labels, split


def _encode_labels(raw: list | None, split: np.ndarray, meta: dict, f: str, problems: list[str]):
    n = len(split)
    if raw is None:
        return np.full(n, -1, dtype=np.int64), list(meta.get("label_names", []))
    present = sorted({v for v in raw if v is not None}, key=lambda v: (isinstance(v, str), v))
    names = [str(v) for v in present]
    if meta.get("label_names"):
        extra = sorted(set(names) - set(meta["label_names"]))
        if extra:
            problems.append(f"{f}: column 'label' has values {extra[:FIRST_ROWS]} not in meta.json label_names")
        names = list(meta["label_names"])
    index = {name: i for i, name in enumerate(names)}
    labels = np.array([-1 if v is None else index.get(str(v), -1) for v in raw], dtype=np.int64)
    has_split_column = any(s is not None for s in split)
    if has_split_column and not ((labels >= 0) & (split == "train")).any():
        problems.append(f"{f}: column 'label' is present but no node with split 'train' has a label")
    elif not (labels >= 0).any():
        problems.append(f"{f}: column 'label' is present but every value is null; drop the column or label training nodes")
    return labels, names


def _check_edges(edges: pa.Table, f: str, ids: np.ndarray, kind: str, problems: list[str]):
    cols = set(edges.column_names)
    missing = [c for c in ("src", "dst") if c not in cols]
    if missing:
        problems.append(f"{f}: missing column(s) {missing} (columns: {sorted(cols)})")
        return None
    lookup = {v: i for i, v in enumerate(ids.tolist())}
    out = []
    for c in ("src", "dst"):
        col = edges.column(c)
        ckind = _id_kind(col.type)
        if ckind != kind:
            problems.append(f"{f}: column '{c}' has type {col.type} but node_id is {kind}; use the same type")
            return None
        values = col.to_pylist()
        idx = np.array([lookup.get(v, -1) for v in values], dtype=np.int64)
        unknown = idx < 0
        if unknown.any():
            problems.append(
                f"{f}: column '{c}' refers to unknown node ids at {_rows(unknown)}, "
                f"first: {np.asarray(values, dtype=object)[unknown][:FIRST_ROWS].tolist()}"
            )
        out.append(idx)
    if any((x < 0).any() for x in out):
        return None
    return np.stack(out)


def _symmetrize(pairs: np.ndarray, f: str, n: int) -> np.ndarray:
    """(2, E_in) user edges -> (2, 2E) symmetric, self-loops and duplicates dropped (warned)."""
    loops = pairs[0] == pairs[1]
    if loops.any():
        warn(f"{f}: dropped {int(loops.sum())} self-loop(s)")
    pairs = pairs[:, ~loops]
    lo, hi = np.minimum(pairs[0], pairs[1]), np.maximum(pairs[0], pairs[1])
    keys = np.unique(lo * n + hi)
    if len(keys) < pairs.shape[1]:
        warn(f"{f}: dropped {pairs.shape[1] - len(keys)} duplicate edge(s) (edges are undirected)")
    lo, hi = keys // n, keys % n
    both = np.concatenate([np.stack([lo, hi]), np.stack([hi, lo])], axis=1)
    order = np.lexsort((both[1], both[0]))  # sorted by (src, dst): CSR-ready
    return both[:, order]


def read_graph_folder(folder: Path, name: str, source: str) -> TextGraph:
    """Read and validate one graph folder; raises InputError listing every problem."""
    folder = Path(folder)
    problems: list[str] = []
    nodes_path, edges_path = folder / NODES_FILE, folder / EDGES_FILE
    nodes = _read_table(nodes_path, problems)
    edges = _read_table(edges_path, problems)
    meta = json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").is_file() else {}
    checked = _check_nodes(nodes, str(nodes_path), problems) if nodes is not None else None
    labels = label_names = edge_index = None
    if checked is not None:
        ids, kind, texts, raw_labels, split = checked
        labels, label_names = _encode_labels(raw_labels, split, meta, str(nodes_path), problems)
        if edges is not None:
            pairs = _check_edges(edges, str(edges_path), ids, kind, problems)
            if pairs is not None and not problems:
                edge_index = _symmetrize(pairs, str(edges_path), len(ids))
    if problems:
        raise InputError(f"invalid graph '{name}':\n" + "\n".join(f"- {p}" for p in problems))
    named = {p.stem: p for p in sorted((folder / "splits").glob("*.json"))}
    return TextGraph(
        name=name,
        source=source,
        node_ids=ids,
        texts=texts,
        labels=labels,
        label_names=label_names,
        split=split,
        edge_index=edge_index,
        named_splits=named,
        fingerprint=graph_fingerprint(ids, texts, labels, split, edge_index),
        meta=meta,
    )
