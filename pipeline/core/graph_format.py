"""The text-graph input format: read, validate and write ``nodes.parquet`` + ``edges.parquet``.

Every problem is collected and reported together, each naming file, column and the first
offending rows (0-based data rows); nothing is written by a command whose input fails here
(exit status 2). Self-loops and duplicate edges are dropped with a warning.

Folder layout (docs/design.md section 3)::

    nodes.parquet   node_id (int64 or string, unique), text (non-empty string),
                    optional label (string or int; null = unlabeled),
                    optional split (train / val / test / null)
    edges.parquet   src, dst (same type as node_id; undirected)
    meta.json       optional: label_names (class order), provenance; format_version (1) in a
                    meta.json the pipeline wrote (:func:`write_meta`), absent from a user's
    splits/NAME.json  optional: {"train": [node_id, ...], "val": [...], "test": [...]}

``read_new_nodes`` checks nodes that grow a loaded graph (``pipeline infer --nodes``) with the
same checks, plus the graph's id type and ids already in it.

``write_graph_folder`` is the one writer: it validates in memory with the same checks as
the reader, writes into a temporary sibling folder, reads that back, and only then renames
it into place, so a failed or interrupted write never leaves a half-written graph.

A graph folder is the one format users write by hand, so ``meta.json`` need not carry
``format_version``: a meta.json without it is read as the user's own; one with it must be of
version 1 (:func:`pipeline.core.format_version.check_version`), else the graph is refused.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core import atomic, ownership
from pipeline.core.errors import InputError, PipelineError
from pipeline.core.format_version import FORMAT_VERSION, KEY, check_version
from pipeline.core.graph import SPLIT_NAMES, TextGraph, graph_fingerprint
from pipeline.core.progress import warn
from pipeline.core.text_column import TextColumn

NODES_FILE, EDGES_FILE, META_FILE, SPLITS_DIR = "nodes.parquet", "edges.parquet", "meta.json", "splits"
FIRST_ROWS = 5  # offending rows (and values) quoted per problem
ROW_GROUP_ROWS = 16384  # nodes per Parquet row group written (as synth writes)


def rows_text(mask: np.ndarray) -> str:
    """``rows [1, 4] (+3 more)`` for the first offending rows of a boolean mask."""
    mask = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(mask)[:FIRST_ROWS].tolist()
    total = int(mask.sum())
    more = f" (+{total - len(rows)} more)" if total > len(rows) else ""
    return f"rows {rows}{more}"


def first_values(column: pa.Array, mask: np.ndarray) -> list:
    """The values of ``column`` at the first ``FIRST_ROWS`` offending rows of ``mask``."""
    return column.take(pa.array(np.flatnonzero(mask)[:FIRST_ROWS])).to_pylist()


def id_kind(arrow_type: pa.DataType) -> str | None:
    """``"int"`` / ``"string"`` for an id column's Arrow type, None when ids cannot have it."""
    if pa.types.is_integer(arrow_type):
        return "int"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    return None


INT64_MAX = 2**63 - 1


def too_big_for_int64(col: pa.Array) -> np.ndarray:
    """(n,) bool: unsigned values that do not fit int64 (they would wrap to negative ids)."""
    if not pa.types.is_unsigned_integer(col.type) or col.type.bit_width < 64:
        return np.zeros(len(col), dtype=bool)
    big = pc.greater(col, pa.scalar(INT64_MAX, col.type)).fill_null(False)
    return np.asarray(big.to_numpy(zero_copy_only=False), dtype=bool)


def _is_string(arrow_type: pa.DataType) -> bool:
    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)


def _decode_dictionaries(table: pa.Table) -> pa.Table:
    """Dictionary-encoded columns (pandas categoricals) -> their plain value type."""
    for i, fld in enumerate(table.schema):
        if pa.types.is_dictionary(fld.type):
            table = table.set_column(i, fld.name, table.column(i).cast(fld.type.value_type))
    return table


def _read_table(path: Path, problems: list[str], lazy: str | None = None) -> tuple[pa.Table | None, TextColumn | None]:
    """The table, and with ``lazy`` that column apart as a :class:`TextColumn` read on demand."""
    if not path.is_file():
        problems.append(f"{path}: file not found (a graph folder needs {NODES_FILE} and {EDGES_FILE})")
        return None, None
    try:
        names = pq.read_schema(path).names
        if lazy not in names:
            return _decode_dictionaries(pq.read_table(path)), None
        table = pq.read_table(path, columns=[c for c in names if c != lazy])
        return _decode_dictionaries(table), TextColumn.from_parquet(path, lazy)
    except Exception as err:  # pyarrow raises several types for corrupt files
        problems.append(f"{path}: not a readable Parquet file ({err})")
        return None, None


# Python's str.isspace() characters, for the "null or empty text" check in Arrow (RE2)
_SPACE = "".join(f"\\x{{{ord(c):x}}}" for c in map(chr, range(0x3001)) if c.isspace())
_BLANK = f"^[{_SPACE}]*$"


@dataclasses.dataclass
class _Nodes:
    ids: np.ndarray | None = None  # usable ids (right type, no nulls, unique) or None
    has_lookup: bool = False  # ids of an id type and at least one row: edges can be looked up
    id_array: pa.Array | None = None  # the node_id column, when it has an id type
    kind: str | None = None  # "int" / "string" when the node_id column has an id type
    id_type: pa.DataType | None = None
    texts: TextColumn | None = None
    label_column: pa.Array | None = None
    split: np.ndarray | None = None
    ok: bool = True


@dataclasses.dataclass(frozen=True)
class _Known:
    """The nodes a nodes table joins (new nodes growing a graph): its ids must share their
    kind and may not repeat them."""

    ids: pa.Array  # (N,) the known node ids
    owner: str  # who holds them, in messages: "graph 'cora'"
    clash_hint: str = ""  # appended to the message on ids that are already known

    @property
    def kind(self) -> str | None:
        return id_kind(self.ids.type)


def _mixed_types(f: str, column: str, typ: pa.DataType, owner: str, owner_column: str, owner_type: pa.DataType) -> str:
    return (f"{f}: column '{column}' has type {typ} but {owner} column '{owner_column}' has type {owner_type}; "
            "mixed id types: use the same type")


def _blank_texts(texts: TextColumn, f: str, problems: list[str]) -> np.ndarray:
    """(N,) bool: null or whitespace-only texts, scanned block by block."""
    bad = np.zeros(len(texts), dtype=bool)
    try:
        for start, arr in zip(texts.block_starts().tolist(), texts.blocks()):
            blank = pc.or_kleene(arr.is_null(), pc.match_substring_regex(arr, _BLANK))
            bad[start : start + len(arr)] = blank.to_numpy(zero_copy_only=False)
    except (OSError, pa.ArrowException) as err:  # a corrupt row group
        problems.append(f"{f}: not a readable Parquet file ({err})")
        return np.zeros(0, dtype=bool)
    return bad


def _check_nodes(
    nodes: pa.Table, f: str, problems: list[str], names: dict[str, str], texts: TextColumn | None = None,
    known: _Known | None = None,
) -> _Nodes:
    """Check the nodes table; ``texts`` is the text column when read apart (lazily) from ``nodes``;
    ``known``: the nodes these join, whose id type they must have and whose ids they may not reuse."""
    out = _Nodes()
    cols = set(nodes.column_names) | ({"text"} if texts is not None else set())
    missing = [names[c] for c in ("node_id", "text") if c not in cols]
    if missing:
        problems.append(f"{f}: missing column(s) {missing} (columns: {sorted(cols)})")
        out.ok = False
    n = nodes.num_rows
    if n == 0:
        problems.append(f"{f}: no rows ({'give at least one new node' if known else 'a graph needs at least one node'})")
        out.ok = False

    if "node_id" in cols:
        col = nodes.column("node_id").combine_chunks()
        out.kind, out.id_type = id_kind(col.type), col.type
        ids_ok = out.kind is not None
        if not ids_ok:
            problems.append(f"{f}: column '{names['node_id']}' has type {col.type}; expected int64 or string")
        elif too_big_for_int64(col).any():
            big = too_big_for_int64(col)
            first = col.filter(pa.array(big)).to_pylist()[:FIRST_ROWS]
            problems.append(
                f"{f}: column '{names['node_id']}' has {int(big.sum())} id(s) above the int64 maximum {INT64_MAX} at "
                f"{rows_text(big)}, first: {first}; store such ids as strings"
            )
            ids_ok = False
        elif known is not None and out.kind != known.kind:
            problems.append(_mixed_types(f, names["node_id"], col.type, known.owner, names["node_id"], known.ids.type))
            ids_ok = False
        if ids_ok:
            out.id_array = col
        null_ids = np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        if null_ids.any():
            problems.append(f"{f}: column '{names['node_id']}' has {int(null_ids.sum())} null value(s) at {rows_text(null_ids)}")
            ids_ok = False
        if out.kind is not None and n:
            out.has_lookup = True
            codes = pc.dictionary_encode(col).indices.fill_null(-1).to_numpy(zero_copy_only=False)
            order = np.argsort(codes, kind="stable")  # rows grouped by id, each group in row order
            first = order[np.r_[True, codes[order][1:] != codes[order][:-1]]]  # first row of each distinct id
            dup = np.ones(n, dtype=bool)
            dup[first] = False
            dup[null_ids] = False
            if dup.any():
                dup_ids = first_values(col, dup)
                problems.append(
                    f"{f}: column '{names['node_id']}' has {int(dup.sum())} duplicate id(s) at {rows_text(dup)}, "
                    f"first: {dup_ids}"
                )
                ids_ok = False
            if known is not None and out.id_array is not None:
                clash = pc.is_in(col.cast(known.ids.type), value_set=known.ids).fill_null(False)
                clash = np.asarray(clash.to_numpy(zero_copy_only=False), dtype=bool)
                if clash.any():
                    problems.append(
                        f"{f}: column '{names['node_id']}' has {int(clash.sum())} id(s) already in {known.owner} at "
                        f"{rows_text(clash)}, first: {first_values(col, clash)}{known.clash_hint}"
                    )
                    ids_ok = False
            if ids_ok:
                if out.kind == "int":
                    out.ids = col.to_numpy(zero_copy_only=False).astype(np.int64)
                else:
                    out.ids = np.empty(n, dtype=object)
                    out.ids[:] = col.to_pylist()
        out.ok &= ids_ok and out.ids is not None

    if "text" in cols:
        if texts is None:
            col = nodes.column("text")
            texts = TextColumn.from_array(col) if _is_string(col.type) else None
            typ = col.type
        else:
            typ = texts.block(0).type if texts.num_blocks else pa.string()
        if texts is None or not _is_string(typ):
            problems.append(f"{f}: column '{names['text']}' has type {typ}; expected string")
            out.ok = False
        else:
            bad = _blank_texts(texts, f, problems)
            if len(bad) != len(texts):
                out.ok = False
            elif bad.any():
                problems.append(f"{f}: column '{names['text']}' has {int(bad.sum())} null or empty text(s) at {rows_text(bad)}")
                out.ok = False
            out.texts = texts

    if "label" in cols:
        col = nodes.column("label").combine_chunks()
        if not (id_kind(col.type) or pa.types.is_null(col.type)):
            problems.append(f"{f}: column '{names['label']}' has type {col.type}; expected string or integer (null = unlabeled)")
            out.ok = False
        else:
            out.label_column = col

    out.split = np.full(n, None, dtype=object)
    if "split" in cols:
        col = nodes.column("split").combine_chunks()
        if not (_is_string(col.type) or pa.types.is_null(col.type)):
            problems.append(f"{f}: column '{names['split']}' has type {col.type}; expected string (train, val, test or null)")
            out.ok = False
        else:
            col = col.cast(pa.string())
            code = pc.index_in(col, value_set=pa.array(SPLIT_NAMES)).fill_null(-1).to_numpy(zero_copy_only=False)
            bad = (code < 0) & np.asarray(col.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
            if bad.any():
                unknown = pc.unique(col.filter(pa.array(bad))).to_pylist()
                problems.append(
                    f"{f}: column '{names['split']}' has unknown value(s) {sorted(str(v) for v in unknown)[:FIRST_ROWS]} "
                    f"at {rows_text(bad)}; allowed: train, val, test or null"
                )
                out.ok = False
            else:
                out.split = np.asarray([None, *SPLIT_NAMES], dtype=object)[code + 1]
    return out


def _encode_labels(column: pa.Array | None, split: np.ndarray, meta: dict, f: str, problems: list[str], cols: dict[str, str]):
    n = len(split)
    names_from_meta = meta.get("label_names") if isinstance(meta.get("label_names"), list) else None
    if column is None:
        return np.full(n, -1, dtype=np.int64), [str(v) for v in names_from_meta or []]
    present = sorted(v for v in pc.unique(column).to_pylist() if v is not None)  # one type: ints or strs
    names = [str(v) for v in present]
    if names_from_meta:
        extra = sorted(set(names) - {str(v) for v in names_from_meta})
        if extra:
            problems.append(f"{f}: column '{cols['label']}' has value(s) {extra[:FIRST_ROWS]} not in meta.json label_names")
        names = [str(v) for v in names_from_meta]
    as_text = column.cast(pa.string())  # labels are matched to names by their text
    labels = pc.index_in(as_text, value_set=pa.array(names, pa.string())).fill_null(-1).to_numpy(zero_copy_only=False)
    labels = labels.astype(np.int64)
    if np.not_equal(split, None).any():
        if not ((labels >= 0) & (split == "train")).any():
            problems.append(f"{f}: column '{cols['label']}' is present but no node with split 'train' has a label")
    elif not (labels >= 0).any():
        problems.append(f"{f}: column '{cols['label']}' is present but every value is null; drop the column or label training nodes")
    return labels, names


def _check_edges(
    edges: pa.Table, f: str, nodes: _Nodes, nodes_file: str, problems: list[str], names: dict[str, str],
    id_owner: str | None = None,
) -> np.ndarray | None:
    """(2, E_in) dense indices of the user's edges, or None when unusable. ``nodes_file`` names
    where ids are looked up, ``id_owner`` (default: ``nodes_file``) whose id type edges must have."""
    cols = set(edges.column_names)
    missing = [names[c] for c in ("src", "dst") if c not in cols]
    if missing:
        problems.append(f"{f}: missing column(s) {missing} (columns: {sorted(cols)})")
    # dense index lookup in Arrow (C speed); with duplicate or null node ids (already reported)
    # it still finds edges to unknown ids
    lookup = nodes.id_array if nodes.has_lookup else None
    out, usable = [], not missing
    for c in ("src", "dst"):
        if c not in cols:
            continue
        col = edges.column(c)
        ckind = id_kind(col.type)
        if ckind is None:
            problems.append(f"{f}: column '{names[c]}' has type {col.type}; expected int64 or string (the type of node_id)")
            usable = False
            continue
        if nodes.kind is not None and ckind != nodes.kind:
            problems.append(_mixed_types(f, names[c], col.type, id_owner or nodes_file, names["node_id"], nodes.id_type))
            usable = False
            continue
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        nulls = np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        if nulls.any():
            problems.append(f"{f}: column '{names[c]}' has {int(nulls.sum())} null value(s) at {rows_text(nulls)}")
            usable = False
        big = too_big_for_int64(col)
        if big.any():
            problems.append(
                f"{f}: column '{names[c]}' has {int(big.sum())} id(s) above the int64 maximum {INT64_MAX} at {rows_text(big)}, "
                f"first: {col.filter(pa.array(big)).to_pylist()[:FIRST_ROWS]}; store such ids as strings"
            )
            usable = False
            continue
        if lookup is None:
            usable = False
            continue
        found = pc.index_in(col.cast(lookup.type), value_set=lookup, skip_nulls=True)
        idx = found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        unknown = (idx < 0) & ~nulls
        if unknown.any():
            first = first_values(col, unknown)
            problems.append(
                f"{f}: column '{names[c]}' has {int(unknown.sum())} id(s) not in {nodes_file} at {rows_text(unknown)}, "
                f"first: {first}"
            )
            usable = False
        out.append(idx)
    return np.stack(out) if usable and nodes.ids is not None else None


def _check_meta(meta_path: Path, problems: list[str]) -> dict:
    if not meta_path.is_file():
        return {}
    try:
        meta = json.loads(meta_path.read_text())
    except RecursionError:
        problems.append(f"{meta_path}: nested too deeply to be a graph's meta.json")
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        problems.append(f"{meta_path}: not valid JSON ({err})")
        return {}
    if isinstance(meta, dict) and KEY in meta:  # written by the pipeline: only its own version reads
        check_version(meta, meta_path, f"write {meta_path.parent} anew with this version's `pipeline datasets` command")
    return _check_meta_dict(meta, str(meta_path), problems)


def write_meta(path: Path, meta: dict) -> None:
    """Write a graph's ``meta.json`` as the pipeline does: with its ``format_version``."""
    path.write_text(json.dumps({**meta, KEY: FORMAT_VERSION}, indent=1, default=str) + "\n")


def _check_meta_dict(meta, f: str, problems: list[str]) -> dict:
    if not isinstance(meta, dict):
        problems.append(f"{f}: expected a JSON object")
        return {}
    names = meta.get("label_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(v, (str, int)) for v in names)):
        problems.append(f"{f}: 'label_names' must be a list of class names")
    elif names is not None and len({str(v) for v in names}) != len(names):
        problems.append(f"{f}: 'label_names' has duplicate names")
    return meta


def _check_named_split(data, f: str, nodes: _Nodes, problems: list[str]) -> None:
    """A named split: {"train": [...], "val": [...], "test": [...]} of known, disjoint node ids."""
    if not isinstance(data, dict):
        problems.append(f"{f}: expected a JSON object with keys train, val, test")
        return
    unknown_keys = sorted(set(data) - set(SPLIT_NAMES))
    if unknown_keys:
        problems.append(f"{f}: unknown key(s) {unknown_keys}; allowed: train, val, test")
    seen: dict = {}
    lookup = nodes.id_array if nodes.ids is not None else None
    for part in SPLIT_NAMES:
        ids = data.get(part, [])
        if not isinstance(ids, list):
            problems.append(f"{f}: '{part}' must be a list of node ids")
            continue
        if lookup is None:
            continue
        valid = _known_ids(ids, lookup, nodes.kind)
        bad = [v for v, ok in zip(ids, valid) if not ok]
        if bad:
            problems.append(f"{f}: '{part}' has {len(bad)} id(s) not in the graph, first: {bad[:FIRST_ROWS]}")
        good = [v for v, ok in zip(ids, valid) if ok]
        overlap = [v for v in good if v in seen]
        if overlap:
            problems.append(
                f"{f}: '{part}' shares {len(overlap)} id(s) with '{seen[overlap[0]]}', first: {overlap[:FIRST_ROWS]}"
            )
        for v in good:
            seen.setdefault(v, part)


def _known_ids(ids: list, lookup: pa.Array, kind: str | None) -> list[bool]:
    """Per JSON value: is it a node id of the graph (same type, present)?"""
    if kind == "int":
        typed = [isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63 for v in ids]
        arrow_type = pa.int64()
    else:
        typed = [isinstance(v, str) for v in ids]
        arrow_type = pa.string()
    candidates = pa.array([v for v, ok in zip(ids, typed) if ok], arrow_type)
    found = iter(pc.is_in(candidates, value_set=lookup.cast(arrow_type)).to_pylist())
    return [ok and next(found) for ok in typed]


def _symmetrize(pairs: np.ndarray, f: str, n: int) -> np.ndarray:
    """(2, E_in) user edges -> (2, 2E) symmetric, self-loops and duplicates dropped (warned)."""
    loops = pairs[0] == pairs[1]
    if loops.any():
        warn(f"{f}: dropped {int(loops.sum())} self-loop(s) at {rows_text(loops)}")
    pairs = pairs[:, ~loops]
    lo, hi = np.minimum(pairs[0], pairs[1]), np.maximum(pairs[0], pairs[1])
    keys = _sorted_unique(lo * n + hi)
    if len(keys) < pairs.shape[1]:
        warn(f"{f}: dropped {pairs.shape[1] - len(keys)} duplicate edge(s) (edges are undirected)")
    lo, hi = keys // n, keys % n
    both = np.sort(np.concatenate([keys, hi * n + lo]))  # key src * n + dst: sorted by (src, dst), CSR-ready
    return np.stack([both // n, both % n]).astype(np.int64)


def _sorted_unique(keys: np.ndarray) -> np.ndarray:
    """np.unique for int keys by sorting (numpy's hash-based unique is several times slower here)."""
    keys = np.sort(keys)
    keep = np.ones(len(keys), dtype=bool)
    keep[1:] = keys[1:] != keys[:-1]
    return keys[keep]


def build_graph(
    nodes: pa.Table | None,
    edges: pa.Table | None,
    meta: dict | None,
    *,
    name: str,
    source: str,
    nodes_file: str,
    edges_file: str,
    split_data: dict[str, tuple[str, object]] | None = None,
    named_splits: dict[str, Path] | None = None,
    problems: list[str] | None = None,
    column_names: dict[str, str] | None = None,
    texts: TextColumn | None = None,
) -> TextGraph:
    """Validate tables (and named splits' data) and build a :class:`TextGraph`.

    ``split_data`` maps a split name to ``(file name for messages, parsed JSON)``.
    ``problems`` may carry problems found before (e.g. unreadable files); all are raised
    together as one :class:`InputError`. ``column_names`` renames columns in messages
    (e.g. ``{"node_id": "id"}`` when the user's file calls it so). ``texts``: the text
    column when it is not in ``nodes`` (the reader streams it from the Parquet file).
    """
    problems = [] if problems is None else problems
    names = {c: c for c in ("node_id", "text", "label", "split", "src", "dst")} | dict(column_names or {})
    meta = meta or {}
    checked = _check_nodes(nodes, nodes_file, problems, names, texts) if nodes is not None else _Nodes(ok=False)
    labels = label_names = None
    if nodes is not None:
        labels, label_names = _encode_labels(checked.label_column, checked.split, meta, nodes_file, problems, names)
    pairs = _check_edges(edges, edges_file, checked, nodes_file, problems, names) if edges is not None else None
    for split_file, data in (split_data or {}).values():
        _check_named_split(data, split_file, checked, problems)
    if problems:
        raise InputError(f"invalid graph '{name}':\n" + "\n".join(f"- {p}" for p in problems))
    assert checked.ok and pairs is not None and labels is not None
    edge_index = _symmetrize(pairs, edges_file, len(checked.ids))
    return TextGraph(
        name=name,
        source=source,
        node_ids=checked.ids,
        texts=checked.texts,
        labels=labels,
        label_names=label_names,
        split=checked.split,
        edge_index=edge_index,
        named_splits=dict(named_splits or {}),
        fingerprint=graph_fingerprint(checked.ids, checked.texts, labels, checked.split, edge_index),
        meta=meta,
    )


def _read_split_files(folder: Path, problems: list[str]) -> tuple[dict[str, Path], dict[str, tuple[str, object]]]:
    paths = {p.stem: p for p in sorted((folder / SPLITS_DIR).glob("*.json"))}
    data = {}
    for split_name, p in paths.items():
        try:
            data[split_name] = (str(p), json.loads(p.read_text()))
        except RecursionError:
            problems.append(f"{p}: nested too deeply to be a split file (lists of node ids)")
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            problems.append(f"{p}: not valid JSON ({err})")
    return paths, data


def read_graph_folder(folder: Path, name: str, source: str) -> TextGraph:
    """Read and validate one graph folder; raises InputError listing every problem."""
    folder = Path(folder)
    problems: list[str] = []
    if not folder.is_dir():
        raise InputError(f"invalid graph '{name}':\n- {folder}: not a folder (a graph folder holds {NODES_FILE} and {EDGES_FILE})")
    nodes_path, edges_path = folder / NODES_FILE, folder / EDGES_FILE
    nodes, texts = _read_table(nodes_path, problems, lazy="text")
    edges, _ = _read_table(edges_path, problems)
    meta = _check_meta(folder / META_FILE, problems)
    split_paths, split_data = _read_split_files(folder, problems)
    return build_graph(
        nodes,
        edges,
        meta,
        name=name,
        source=source,
        nodes_file=str(nodes_path),
        edges_file=str(edges_path),
        split_data=split_data,
        named_splits=split_paths,
        problems=problems,
        texts=texts,
    )


# ---------------------------------------------------------------------------------------
# New nodes growing a graph


@dataclasses.dataclass(frozen=True)
class NewNodes:
    """M validated new nodes of a graph of N nodes; they take dense indices N..N+M-1."""

    ids: np.ndarray  # (M,) int64 or object (str), the graph's id kind
    texts: TextColumn  # (M,)
    labels: list  # (M,) label values as given (str or int; None = unlabelled), all None without a label column
    edge_index: np.ndarray  # (2, 2E') the grown graph's: the graph's edges and the new ones, symmetric, CSR-ready


def _id_array(ids: np.ndarray) -> pa.Array:
    """A graph's (N,) node ids as the Arrow array its nodes file would hold."""
    return pa.array(ids) if ids.dtype != object else pa.array(ids.tolist(), pa.string())


def read_new_nodes(graph: TextGraph, nodes_path: Path, edges_path: Path, clash_hint: str = "") -> NewNodes:
    """Read and validate new nodes (``nodes_path``) and their edges (``edges_path``), both in
    the input format, against ``graph``: ids of the graph's kind and not already in it; edges
    may join new nodes to each other and to the graph's nodes. Raises InputError listing every
    problem; ``clash_hint`` ends the message on ids already in the graph."""
    problems: list[str] = []
    nodes, texts = _read_table(Path(nodes_path), problems, lazy="text")
    edges, _ = _read_table(Path(edges_path), problems)
    names = {c: c for c in ("node_id", "text", "label", "split", "src", "dst")}
    known = _Known(_id_array(graph.node_ids), f"graph '{graph.name}'", clash_hint)
    new = _check_nodes(nodes, str(nodes_path), problems, names, texts, known=known) if nodes is not None else _Nodes(ok=False)
    # edges look ids up among the graph's nodes (0..N-1), then the new ones (N..N+M-1)
    lookup = pa.concat_arrays([known.ids, new.id_array.cast(known.ids.type)]) if new.id_array is not None else None
    joint = _Nodes(ids=new.ids, has_lookup=lookup is not None, id_array=lookup, kind=known.kind, id_type=known.ids.type)
    pairs = None
    if edges is not None:
        pairs = _check_edges(edges, str(edges_path), joint, f"{nodes_path} or {known.owner}", problems, names, id_owner=known.owner)
    if problems:
        raise InputError(f"invalid new nodes for {known.owner}:\n" + "\n".join(f"- {p}" for p in problems))
    assert new.ok and new.ids is not None and new.texts is not None and pairs is not None
    ei = graph.edge_index
    both = np.concatenate([pairs, ei[:, ei[0] < ei[1]]], axis=1)  # new edges first: warnings quote their rows
    labels = new.label_column.to_pylist() if new.label_column is not None else [None] * len(new.ids)
    return NewNodes(new.ids, new.texts, labels, _symmetrize(both, str(edges_path), graph.num_nodes + len(new.ids)))


# ---------------------------------------------------------------------------------------
# Writing


def graph_edges_table(graph: TextGraph, id_type: pa.DataType | None = None) -> pa.Table:
    """The graph's undirected edges, each once (src index < dst index), as user ids."""
    ei = graph.edge_index
    keep = ei[0] < ei[1]
    ids = graph.node_ids
    src, dst = ids[ei[0][keep]], ids[ei[1][keep]]
    typ = id_type or (pa.int64() if ids.dtype.kind in "iu" else pa.string())
    return pa.table({"src": pa.array(src.tolist(), typ), "dst": pa.array(dst.tolist(), typ)})


def check_output_folder(out: Path, overwrite: bool, inputs=()) -> None:
    """Refuse to write over something unless asked to, never over a folder the pipeline did
    not write, and never over an input (:func:`pipeline.core.ownership.claim_output`)."""
    ownership.claim_output(out, "graph", "OUT", overwrite=overwrite, inputs=inputs)


def move_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    """Mark the finished folder ``tmp`` as a graph and rename it to ``out``, replacing an
    earlier graph there (with ``overwrite``) as late as possible."""
    ownership.write_marker(tmp, "graph")
    atomic.fsync_tree(tmp)
    atomic.move_into_place(tmp, out, ownership.replacer("graph", "OUT", overwrite))


def write_graph_folder(
    out: Path,
    nodes: pa.Table,
    edges: pa.Table,
    *,
    meta: dict | None = None,
    splits: dict[str, dict[str, list]] | None = None,
    extra_files: dict[str, str | Callable[[Path], None]] | None = None,
    overwrite: bool = False,
) -> TextGraph:
    """Validate and write a graph folder atomically; returns the graph as read back from it.

    ``nodes``/``edges`` are tables in the input format; ``splits`` maps a split name to
    ``{"train": [ids], "val": [...], "test": [...]}``; ``extra_files`` maps a file name to
    text, or to a function writing the file at the path it is given, written beside the
    graph (e.g. ``datasets_subset_config.json``). Bad content raises
    :class:`InputError` before anything is written.
    """
    out = Path(out)
    check_output_folder(out, overwrite)
    meta = dict(meta or {})
    problems: list[str] = []
    _check_meta_dict(meta, str(out / META_FILE), problems)
    split_data = {k: (str(out / SPLITS_DIR / f"{k}.json"), v) for k, v in (splits or {}).items()}
    expected = build_graph(
        nodes,
        edges,
        meta,
        name=out.name,
        source=str(out.resolve()),
        nodes_file=str(out / NODES_FILE),
        edges_file=str(out / EDGES_FILE),
        split_data=split_data,
        problems=problems,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic.temp_sibling(out)
    try:
        tmp.mkdir()
        # row groups of ROW_GROUP_ROWS nodes: a large graph's texts are then read in pieces (TextColumn)
        pq.write_table(nodes, tmp / NODES_FILE, compression="zstd", row_group_size=ROW_GROUP_ROWS)
        pq.write_table(edges, tmp / EDGES_FILE, compression="zstd")
        write_meta(tmp / META_FILE, meta)
        if splits:
            (tmp / SPLITS_DIR).mkdir()
            for split_name, data in splits.items():
                (tmp / SPLITS_DIR / f"{split_name}.json").write_text(json.dumps(data) + "\n")
        for fname, content in (extra_files or {}).items():
            if callable(content):
                content(tmp / fname)
            else:
                (tmp / fname).write_text(content)
        written = read_graph_folder(tmp, name=out.name, source=str(tmp))
        if written.fingerprint != expected.fingerprint:
            raise PipelineError(f"{out}: the written graph does not read back identically (internal error)")
        move_into_place(tmp, out, overwrite)
        if isinstance(written.texts, TextColumn) and written.texts.source is not None:
            written.texts.source = out / NODES_FILE  # its open file moved with the folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dataclasses.replace(
        written,
        source=str(out.resolve()),
        named_splits={k: out / SPLITS_DIR / p.name for k, p in written.named_splits.items()},
    )


def graph_folder(graph: TextGraph) -> Path:
    """The folder a loaded graph was read from (built-in or user folder)."""
    from pipeline.core.builtin_datasets import builtin_path

    return builtin_path(graph.source) or Path(graph.source)


def read_nodes_table(graph: TextGraph) -> pa.Table:
    """The graph's nodes table as stored (all columns, rows in dense-index order)."""
    return _decode_dictionaries(pq.read_table(graph_folder(graph) / NODES_FILE))
