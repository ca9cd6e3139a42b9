"""Import a graph from CSV/TSV/JSONL files into the Parquet input format.

Nodes: a CSV, TSV or JSONL file with an id column, a text column and optionally a label and
a split column (names set by flags). Edges: a CSV, TSV or JSONL edge list with a source and
a destination column (or, with ``edges_header=False``, a CSV/TSV whose first two fields are
source and destination). Formats follow the file extension unless given.

Ids: with ``id_type="auto"`` JSONL keeps the JSON types (int or string; one type across
all id columns) and CSV/TSV ids become integers when every id is a plain integer
(``-?[1-9][0-9]*`` or ``0``, so ``007`` stays a string), strings otherwise.

Problems are reported in two passes, each complete: first the file-level ones (missing
files or columns, unparsable lines, wrong value types, mixed id types), then the graph
checks shared with the Parquet reader (duplicate or null ids, empty text, unknown edge ids,
unknown split values, labels with no labeled training node). Nothing is written unless
both pass; the written folder is validated again by reading it back before it is moved
into place.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa

from pipeline.core.errors import ConfigErrors, InputError
from pipeline.core.graph import TextGraph
from pipeline.core.graph_format import FIRST_ROWS, build_graph, check_output_folder, graph_edges_table, write_graph_folder
from pipeline.core.options import argument, choice_problems, option
from pipeline.core.progress import log
from pipeline.graph_options import flags_file, graph_overwrite_option, out_argument

FORMATS = ("auto", "csv", "tsv", "jsonl")
ID_TYPES = ("auto", "int", "string")
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_INT_RE = re.compile(r"^-?(0|[1-9][0-9]*)$")
_INT64 = (-(2**63), 2**63 - 1)

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass
class ImportConfig:
    """Settings of ``pipeline datasets import``; the ``*_col`` fields name the user's columns."""

    nodes: Path = argument(help="Nodes file: CSV, TSV or JSONL with an id and a text column.", show_default=False, metavar="NODES")
    edges: Path = argument(help="Edge list: CSV, TSV or JSONL with a source and a destination column.", show_default=False, metavar="EDGES")
    out: Path = out_argument()
    id_col: str = option("node_id", "Node id column of the nodes file.")
    text_col: str = option("text", "Text column of the nodes file.")
    label_col: str | None = option(None, "Label column (default: 'label' when present).")
    split_col: str | None = option(None, "Split column, values train/val/test/empty (default: 'split' when present).")
    src_col: str = option("src", "Source column of the edge list.")
    dst_col: str = option("dst", "Destination column of the edge list.")
    edges_header: bool = option(
        True, "Whether a CSV/TSV edge list starts with a header line; without one, the first two fields are source and destination.",
        off_flag="--no-edges-header",
    )
    id_type: str = option(
        "auto", "Id type: auto = JSON types, or int when every CSV/TSV id is a plain integer.", choices=ID_TYPES
    )
    nodes_format: str = option("auto", "Nodes file format (auto: by extension).", choices=FORMATS)
    edges_format: str = option("auto", "Edge list format (auto: by extension).", choices=FORMATS)
    overwrite: bool = graph_overwrite_option()

    def validate(self) -> None:
        """Raise one InputError naming every flag whose value is not one of its choices."""
        errors = ConfigErrors()
        for problem in choice_problems(self):
            errors.add(problem)
        errors.raise_if_any()


def run_import(config: ImportConfig) -> None:
    """``pipeline datasets import``: the graph folder, with the flags that made it."""
    config.validate()
    graph = import_graph(
        config.nodes, config.edges, config.out,
        overwrite=config.overwrite,
        extra_files=flags_file("datasets_import", config),
        id_col=config.id_col, text_col=config.text_col, label_col=config.label_col, split_col=config.split_col,
        src_col=config.src_col, dst_col=config.dst_col, id_type=config.id_type,
        nodes_format=config.nodes_format, edges_format=config.edges_format, edges_header=config.edges_header,
    )
    log(f"imported {graph.num_nodes} nodes, {graph.num_edges} edges, {graph.num_classes} classes -> {config.out}")


@dataclass
class _Column:
    """One column of a parsed file: values by row, and where they came from."""

    file: str
    name: str  # the user's column name (for messages)
    values: list
    textual: bool  # values came from CSV/TSV (all strings) rather than typed JSON


def _rows(indices: list[int]) -> str:
    more = f" (+{len(indices) - FIRST_ROWS} more)" if len(indices) > FIRST_ROWS else ""
    return f"rows {indices[:FIRST_ROWS]}{more}"


def file_format(path: Path, given: str, flag: str, problems: list[str]) -> str | None:
    if given != "auto":
        return given
    fmt = _EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        problems.append(f"{path}: cannot tell the format from the extension '{path.suffix}'; pass {flag} csv, tsv or jsonl")
    return fmt


def _read_records(path: Path, fmt: str, header: bool, problems: list[str]) -> tuple[list[str], list[dict]] | None:
    """(column names, records) of a CSV/TSV/JSONL file; None when unreadable."""
    if not path.is_file():
        problems.append(f"{path}: file not found")
        return None
    try:
        text = path.read_bytes().decode("utf-8-sig")  # raw: keep \r\n inside quoted CSV fields
    except UnicodeDecodeError as err:
        problems.append(f"{path}: not UTF-8 text ({err})")
        return None
    if fmt == "jsonl":
        records, bad_lines, not_objects, columns = [], [], [], {}
        for lineno, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 may sit in a string
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad_lines.append(lineno)
                continue
            if not isinstance(rec, dict):
                not_objects.append(lineno)
                continue
            columns.update(dict.fromkeys(rec))
            records.append(rec)
        if bad_lines:
            problems.append(f"{path}: {len(bad_lines)} line(s) are not valid JSON, first: lines {bad_lines[:FIRST_ROWS]}")
        if not_objects:
            problems.append(f"{path}: {len(not_objects)} line(s) are not JSON objects, first: lines {not_objects[:FIRST_ROWS]}")
        return (list(columns), records) if not (bad_lines or not_objects) else None
    delimiter = "," if fmt == "csv" else "\t"
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    rows = [r for r in rows if r]  # blank lines
    if header:
        if not rows:
            problems.append(f"{path}: empty file (expected a header line)")
            return None
        names, rows = rows[0], rows[1:]
    else:
        names = [str(i) for i in range(max((len(r) for r in rows), default=0))]
    ragged = [i for i, r in enumerate(rows) if len(r) != len(names)]
    if header and ragged:
        problems.append(
            f"{path}: {len(ragged)} row(s) have a different number of fields than the header ({len(names)}) at {_rows(ragged)}"
        )
        return None
    return names, [dict(zip(names, r)) for r in rows]


def _column(parsed, path: Path, name: str, required: bool, textual: bool, problems: list[str], flag: str) -> _Column | None:
    names, records = parsed
    if name not in names:
        if required:
            problems.append(f"{path}: missing column '{name}' (columns: {names}); set it with {flag}")
        return None
    values = [rec.get(name) for rec in records]
    if textual:
        values = [None if v == "" else v for v in values]
    return _Column(str(path), name, values, textual)


def _bad_type_rows(col: _Column, allowed: tuple[type, ...]) -> list[int]:
    return [i for i, v in enumerate(col.values) if v is not None and (isinstance(v, bool) or not isinstance(v, allowed))]


def _type_ids(columns: list[_Column], id_type: str, problems: list[str]) -> str | None:
    """Convert the id columns in place to one Python type; returns "int"/"string" or None."""
    before = len(problems)
    kinds = {}
    for col in columns:
        bad = _bad_type_rows(col, (int, str))
        if bad:
            first = [col.values[i] for i in bad[:FIRST_ROWS]]
            problems.append(f"{col.file}: column '{col.name}' has ids that are neither integers nor strings at {_rows(bad)}, first: {first}")
            continue
        if col.textual:
            kinds[id(col)] = "int" if all(v is None or _INT_RE.match(v) for v in col.values) else "string"
            continue
        ints = [i for i, v in enumerate(col.values) if isinstance(v, int)]
        strs = [i for i, v in enumerate(col.values) if isinstance(v, str)]
        if ints and strs:
            minority, kind = (ints, "int") if len(ints) <= len(strs) else (strs, "string")
            problems.append(
                f"{col.file}: column '{col.name}' mixes int and string ids ({len(ints)} int, {len(strs)} string); "
                f"{kind} ids at {_rows(minority)}; use one type (or --id-type string)"
            )
            continue
        kinds[id(col)] = "int" if ints or not strs else "string"
    if len(problems) > before:
        return None

    if id_type == "string":
        for col in columns:
            col.values = [None if v is None else str(v) for v in col.values]
        return "string"
    if id_type == "int":
        for col in columns:
            bad = [i for i, v in enumerate(col.values) if v is not None and not (isinstance(v, int) or _INT_RE.match(v))]
            if bad:
                first = [col.values[i] for i in bad[:FIRST_ROWS]]
                problems.append(f"{col.file}: column '{col.name}' has non-integer ids at {_rows(bad)}, first: {first} (--id-type int)")
            else:
                col.values = [None if v is None else int(v) for v in col.values]
                _check_int64([col], problems)
        return None if len(problems) > before else "int"

    # auto: typed (JSON) columns decide; textual columns follow (digits are valid strings too)
    typed = {kinds[id(c)] for c in columns if not c.textual}
    if len(typed) > 1:
        by_kind = {k: [c for c in columns if not c.textual and kinds[id(c)] == k] for k in typed}
        a, b = by_kind["int"][0], by_kind["string"][0]
        problems.append(
            f"{b.file}: column '{b.name}' has string ids but {a.file} column '{a.name}' has int ids; "
            "mixed id types: use one type (or --id-type string)"
        )
        return None
    if typed:
        kind = typed.pop()
        for col in columns:
            if col.textual and kind == "int" and kinds[id(col)] == "string":
                problems.append(
                    f"{col.file}: column '{col.name}' has non-integer ids but the JSONL id columns are integers; "
                    "mixed id types: use one type (or --id-type string)"
                )
        if len(problems) > before:
            return None
    else:
        kind = "int" if all(kinds[id(c)] == "int" for c in columns) else "string"
    for col in columns:
        if kind == "int":
            col.values = [None if v is None else int(v) for v in col.values]
        else:
            col.values = [None if v is None else str(v) for v in col.values]
    if kind == "int":
        _check_int64(columns, problems)
    return None if len(problems) > before else kind


def _check_int64(columns: list[_Column], problems: list[str]) -> None:
    """Integer ids must fit int64 (the cache and predictions store them so): never a wrap."""
    for col in columns:
        big = [i for i, v in enumerate(col.values) if v is not None and not _INT64[0] <= v <= _INT64[1]]
        if big:
            problems.append(f"{col.file}: column '{col.name}' has ids outside int64 at {_rows(big)}; use --id-type string")


def _type_labels(col: _Column, problems: list[str]) -> pa.Array | None:
    bad = _bad_type_rows(col, (int, str))
    if bad:
        first = [col.values[i] for i in bad[:FIRST_ROWS]]
        problems.append(f"{col.file}: column '{col.name}' has labels that are neither integers nor strings at {_rows(bad)}, first: {first}")
        return None
    values = col.values
    if col.textual and all(v is None or _INT_RE.match(v) for v in values) and any(v is not None for v in values):
        values = [None if v is None else int(v) for v in values]
    ints = [i for i, v in enumerate(values) if isinstance(v, int)]
    strs = [i for i, v in enumerate(values) if isinstance(v, str)]
    if ints and strs:
        minority, kind = (ints, "int") if len(ints) <= len(strs) else (strs, "string")
        problems.append(
            f"{col.file}: column '{col.name}' mixes int and string labels ({len(ints)} int, {len(strs)} string); "
            f"{kind} labels at {_rows(minority)}"
        )
        return None
    return pa.array(values, pa.int64() if ints else pa.string())


def _type_strings(col: _Column, what: str, problems: list[str]) -> pa.Array | None:
    bad = _bad_type_rows(col, (str,))
    if bad:
        first = [col.values[i] for i in bad[:FIRST_ROWS]]
        problems.append(f"{col.file}: column '{col.name}' has {what} that are not strings at {_rows(bad)}, first: {first}")
        return None
    return pa.array(col.values, pa.string())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def parse_import(
    nodes_path: Path,
    edges_path: Path,
    *,
    id_col: str = "node_id",
    text_col: str = "text",
    label_col: str | None = None,
    split_col: str | None = None,
    src_col: str = "src",
    dst_col: str = "dst",
    id_type: str = "auto",
    nodes_format: str = "auto",
    edges_format: str = "auto",
    edges_header: bool = True,
) -> tuple[pa.Table, pa.Table, TextGraph]:
    """Parse and validate; returns (nodes table, cleaned edges table, graph) or raises InputError.

    ``label_col``/``split_col`` None: use ``label``/``split`` when the nodes file has them.
    """
    problems: list[str] = []
    nfmt = file_format(nodes_path, nodes_format, "--nodes-format", problems)
    efmt = file_format(edges_path, edges_format, "--edges-format", problems)
    if efmt == "jsonl" and not edges_header:
        problems.append(f"{edges_path}: --no-edges-header applies to CSV/TSV edge lists only")
    nodes = _read_records(nodes_path, nfmt, True, problems) if nfmt else None
    edges = _read_records(edges_path, efmt, edges_header, problems) if efmt else None
    if not edges_header and edges is not None and edges[1]:
        src_col, dst_col = "0", "1"
        if len(edges[0]) < 2:
            problems.append(f"{edges_path}: expected at least two fields per line (source, destination)")

    cols: dict[str, _Column | None] = {}
    if nodes is not None:
        t = nfmt != "jsonl"
        cols["node_id"] = _column(nodes, nodes_path, id_col, True, t, problems, "--id-col")
        cols["text"] = _column(nodes, nodes_path, text_col, True, t, problems, "--text-col")
        cols["label"] = _column(nodes, nodes_path, label_col or "label", label_col is not None, t, problems, "--label-col")
        cols["split"] = _column(nodes, nodes_path, split_col or "split", split_col is not None, t, problems, "--split-col")
        if cols["text"] is not None and t:
            cols["text"].values = ["" if v is None else v for v in cols["text"].values]
    if edges is not None:
        t = efmt != "jsonl"
        hint = "--src-col" if edges_header else "--no-edges-header"
        cols["src"] = _column(edges, edges_path, src_col, True, t, problems, hint)
        cols["dst"] = _column(edges, edges_path, dst_col, True, t, problems, hint.replace("src", "dst"))

    id_cols = [c for c in (cols.get("node_id"), cols.get("src"), cols.get("dst")) if c is not None]
    kind = _type_ids(id_cols, id_type, problems) if len(id_cols) == 3 else None
    arrays = {}
    if cols.get("text") is not None:
        arrays["text"] = _type_strings(cols["text"], "texts", problems)
    if cols.get("label") is not None:
        arrays["label"] = _type_labels(cols["label"], problems)
    if cols.get("split") is not None:
        arrays["split"] = _type_strings(cols["split"], "split values", problems)
    if problems or kind is None:
        raise InputError(f"cannot import graph from {nodes_path} and {edges_path}:\n" + "\n".join(f"- {p}" for p in problems))

    typ = pa.int64() if kind == "int" else pa.string()
    node_table = pa.table(
        {"node_id": pa.array(cols["node_id"].values, typ), **{k: v for k, v in arrays.items() if v is not None}}
    )
    edge_table = pa.table({"src": pa.array(cols["src"].values, typ), "dst": pa.array(cols["dst"].values, typ)})
    # The reader's checks, with messages naming the user's files.
    graph = build_graph(
        node_table,
        edge_table,
        {},
        name=nodes_path.stem,
        source=str(nodes_path),
        nodes_file=str(nodes_path),
        edges_file=str(edges_path),
        column_names={"node_id": id_col, "text": text_col, "label": cols["label"].name if cols.get("label") else "label",
                      "split": cols["split"].name if cols.get("split") else "split", "src": src_col, "dst": dst_col},
    )
    return node_table, graph_edges_table(graph, typ), graph


def import_graph(nodes_path: Path, edges_path: Path, out: Path, *, overwrite: bool = False,
                 extra_files: dict[str, str | Callable[[Path], None]] | None = None, **options) -> TextGraph:
    """Parse, validate and write ``out`` (atomically); see :func:`parse_import` for options."""
    check_output_folder(out, overwrite, inputs=[nodes_path, edges_path])
    node_table, edge_table, graph = parse_import(nodes_path, edges_path, **options)
    meta = {
        "imported_from": {
            "nodes": str(nodes_path.resolve()),
            "edges": str(edges_path.resolve()),
            "nodes_sha256": _sha256(nodes_path),
            "edges_sha256": _sha256(edges_path),
        },
    }
    if graph.label_names:
        meta["label_names"] = list(graph.label_names)
    return write_graph_folder(out, node_table, edge_table, meta=meta, extra_files=extra_files, overwrite=overwrite)
