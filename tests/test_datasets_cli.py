"""`pipeline datasets check | import | subset` through the real CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.core.graph import load_graph
from pipeline.graph_summary import connected_components
from log_lines import untimed

ROWS = [  # node_id, text, label, split
    ("p1", "Graph neural networks, a survey", "ml", "train"),
    ("p2", 'He said "hi"\nand left', "ml", "val"),
    ("p3", "Data\u2028bases, \u00e9t\u00e9", "db", "test"),
    ("p4", "Query optimisation", "db", "train"),
    ("p5", "Unlabeled text", None, None),
]
EDGE_ROWS = [("p1", "p2"), ("p2", "p3"), ("p3", "p4"), ("p1", "p4")]


def write_nodes(path, rows, fmt, int_ids=False, id_col="node_id"):
    conv = (lambda v: int(v[1:])) if int_ids else (lambda v: v)
    if fmt == "jsonl":
        lines = [json.dumps({id_col: conv(i), "text": t, "label": lab, "split": s, "extra": 1}, ensure_ascii=False) for i, t, lab, s in rows]
        path.write_text("\n".join(lines) + "\n")
    else:
        import csv

        with path.open("w", newline="") as fh:
            w = csv.writer(fh, delimiter="," if fmt == "csv" else "\t")
            w.writerow([id_col, "text", "label", "split"])
            for i, t, lab, s in rows:
                w.writerow([conv(i), t, lab or "", s or ""])
    return path


def write_edges(path, rows, fmt, int_ids=False, header=True):
    conv = (lambda v: int(v[1:])) if int_ids else (lambda v: v)
    if fmt == "jsonl":
        path.write_text("".join(json.dumps({"src": conv(a), "dst": conv(b)}) + "\n" for a, b in rows))
    else:
        sep = "," if fmt == "csv" else "\t"
        path.write_text(("src" + sep + "dst\n" if header else "") + "".join(f"{conv(a)}{sep}{conv(b)}\n" for a, b in rows))
    return path


def fails(result, *lines: str) -> None:
    """Exit status 2 and exactly these problem lines after the first `Error:` line."""
    assert result.exit_code == 2, result.output
    got = result.stderr.splitlines()
    assert got[0].startswith("Error: ")
    assert got[1:] == list(lines), got


# --- check ------------------------------------------------------------------------------------


def test_check_prints_summary_and_writes_json(cli, tmp_path):
    out = tmp_path / "reports" / "cora.json"
    result = cli("datasets", "check", "cora", "--json", out)
    assert result.exit_code == 0, result.output
    for text in ("nodes", "2708", "5278", "edge homophily", "0.8100", "Neural_Networks", "818", "isolated nodes", "planetoid_public"):
        assert text in result.stdout
    summary = json.loads(out.read_text())
    assert (summary["nodes"], summary["edges"], summary["classes"]) == (2708, 5278, 7)
    assert summary["label_counts"]["Neural_Networks"] == 818 and summary["labeled_nodes"] == 2708
    assert summary["edge_homophily"] == 0.81 and summary["isolated_nodes"] == 0
    assert summary["text_chars"]["p50"] == 952.0 and summary["text_chars"]["p0"] == 113.0
    assert summary["named_splits"]["planetoid_public"] == {"train": 140, "val": 500, "test": 1000}
    assert summary["config"] == {"graph": "cora", "json": str(out)}  # the flags as given
    assert [p.name for p in out.parent.iterdir()] == ["cora.json"]


def test_check_citeseer_isolated_and_homophily(cli, tmp_path):
    result = cli("datasets", "check", "citeseer", "--json", tmp_path / "s.json")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["isolated_nodes"] == 86 and summary["edge_homophily"] == 0.7437
    assert summary["isolated_node_ids"][:3] == [57, 71, 168]


def test_check_invalid_graph_writes_no_json(cli, write_graph, tmp_path):
    g = write_graph({"node_id": [1], "text": [""]}, {"src": [1], "dst": [1]})
    result = cli("datasets", "check", g, "--json", tmp_path / "s.json")
    fails(result, f"- {g}/nodes.parquet: column 'text' has 1 null or empty text(s) at rows [0]")
    assert not (tmp_path / "s.json").exists()


# --- import -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "nfmt, efmt, int_ids",
    [("csv", "csv", False), ("csv", "tsv", True), ("jsonl", "jsonl", False), ("jsonl", "jsonl", True), ("tsv", "jsonl", True)],
)
def test_import_round_trip(cli, tmp_path, nfmt, efmt, int_ids):
    nodes = write_nodes(tmp_path / f"nodes.{nfmt}", ROWS, nfmt, int_ids)
    edges = write_edges(tmp_path / f"edges.{efmt}", EDGE_ROWS, efmt, int_ids)
    out = tmp_path / "out"
    result = cli("datasets", "import", nodes, edges, out)
    assert result.exit_code == 0, result.output
    g = load_graph(out)
    conv = (lambda v: int(v[1:])) if int_ids else (lambda v: v)
    assert g.node_ids.tolist() == [conv(r[0]) for r in ROWS]
    assert g.texts == [r[1] for r in ROWS]
    assert [None if i < 0 else g.label_names[i] for i in g.labels] == [r[2] for r in ROWS]
    assert g.split.tolist() == [r[3] for r in ROWS]
    got = {tuple(sorted((g.node_ids[a].item() if int_ids else g.node_ids[a], g.node_ids[b].item() if int_ids else g.node_ids[b]), key=str))
           for a, b in g.edge_index.T}
    assert got == {tuple(sorted((conv(a), conv(b)), key=str)) for a, b in EDGE_ROWS}
    assert g.num_edges == len(EDGE_ROWS)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["label_names"] == ["db", "ml"] and meta["imported_from"]["nodes"] == str(nodes.resolve())
    config = json.loads((out / "datasets_import_config.json").read_text())
    assert config["nodes"] == str(nodes) and config["id-type"] == "auto"  # the flags as given
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp folder left


def test_import_column_flags_no_header_and_warnings(cli, tmp_path):
    rows = [("7", "a", "1", None), ("007", "b", "2", None), ("x", "c", "1", None)]
    nodes = write_nodes(tmp_path / "n.csv", rows, "csv", id_col="id")
    edges = tmp_path / "e.txt"
    edges.write_text("7\t007\n7\t7\n007\t7\n")
    out = tmp_path / "out"
    result = cli("datasets", "import", nodes, edges, out, "--id-col", "id", "--edges-format", "tsv", "--no-edges-header")
    assert result.exit_code == 0, result.output
    assert untimed(result.stderr)[:2] == [
        f"warning: {edges}: dropped 1 self-loop(s) at rows [1]",
        f"warning: {edges}: dropped 1 duplicate edge(s) (edges are undirected)",
    ]
    g = load_graph(out)
    assert g.node_ids.tolist() == ["7", "007", "x"]  # "007" keeps ids as strings
    assert g.label_names == ["1", "2"] and g.labels.tolist() == [0, 1, 0]  # integer labels
    assert g.num_edges == 1
    assert load_graph(out).fingerprint == g.fingerprint  # warnings are not repeated: edges were cleaned
    assert cli("datasets", "check", out).stderr == ""


def test_import_errors_write_nothing(cli, tmp_path):
    out = tmp_path / "out"
    n = write_nodes(tmp_path / "n.jsonl", ROWS, "jsonl")
    e = write_edges(tmp_path / "e.csv", EDGE_ROWS, "csv")

    fails(cli("datasets", "import", tmp_path / "none.csv", tmp_path / "e.xyz", out),
          f"- {tmp_path}/e.xyz: cannot tell the format from the extension '.xyz'; pass --edges-format csv, tsv or jsonl",
          f"- {tmp_path}/none.csv: file not found")
    fails(cli("datasets", "import", n, e, out, "--id-col", "pid", "--src-col", "from", "--label-col", "class"),
          f"- {n}: missing column 'pid' (columns: ['node_id', 'text', 'label', 'split', 'extra']); set it with --id-col",
          f"- {n}: missing column 'class' (columns: ['node_id', 'text', 'label', 'split', 'extra']); set it with --label-col",
          f"- {e}: missing column 'from' (columns: ['src', 'dst']); set it with --src-col")

    # mixed id types inside a column, wrong types, mixed labels
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(json.dumps(r) for r in [
        {"node_id": 1, "text": "a", "label": "x"},
        {"node_id": "2", "text": 5, "label": 1},
        {"node_id": 3, "text": "c", "label": "y", "split": 0},
        {"node_id": 4.5, "text": "d"},
    ]) + "\n")
    fails(cli("datasets", "import", bad, e, out),
          f"- {bad}: column 'node_id' has ids that are neither integers nor strings at rows [3], first: [4.5]",
          f"- {bad}: column 'text' has texts that are not strings at rows [1], first: [5]",
          f"- {bad}: column 'label' mixes int and string labels (1 int, 2 string); int labels at rows [1]",
          f"- {bad}: column 'split' has split values that are not strings at rows [2], first: [0]")
    bad.write_text("\n".join(json.dumps({"node_id": v, "text": "t"}) for v in [1, "b", 3]) + "\n")
    fails(cli("datasets", "import", bad, e, out),
          f"- {bad}: column 'node_id' mixes int and string ids (2 int, 1 string); string ids at rows [1]; "
          "use one type (or --id-type string)")
    # mixed id types across files
    ej = write_edges(tmp_path / "e.jsonl", [("p1", "p2")], "jsonl")
    ni = write_nodes(tmp_path / "ni.jsonl", ROWS, "jsonl", int_ids=True)
    fails(cli("datasets", "import", ni, ej, out),
          f"- {ej}: column 'src' has string ids but {ni} column 'node_id' has int ids; mixed id types: use one type (or --id-type string)")
    # malformed lines and ragged rows
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"node_id": "a", "text": "t"}\n{oops\n[1]\n')
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("src,dst\na,b\na\n")
    fails(cli("datasets", "import", broken, ragged, out),
          f"- {broken}: 1 line(s) are not valid JSON, first: lines [2]",
          f"- {broken}: 1 line(s) are not JSON objects, first: lines [3]",
          f"- {ragged}: 1 row(s) have a different number of fields than the header (2) at rows [1]")
    # graph checks name the user's files and columns
    dup = write_nodes(tmp_path / "dup.csv", [("a", "x", "", "train"), ("a", "", "", "dev")], "csv", id_col="pid")
    fails(cli("datasets", "import", dup, e, out, "--id-col", "pid"),
          f"- {dup}: column 'pid' has 1 duplicate id(s) at rows [1], first: ['a']",
          f"- {dup}: column 'text' has 1 null or empty text(s) at rows [1]",
          f"- {dup}: column 'split' has unknown value(s) ['dev'] at rows [1]; allowed: train, val, test or null",
          f"- {dup}: column 'label' is present but every value is null; drop the column or label training nodes",
          f"- {e}: column 'src' has 4 id(s) not in {dup} at rows [0, 1, 2, 3], first: ['p1', 'p2', 'p3', 'p1']",
          f"- {e}: column 'dst' has 4 id(s) not in {dup} at rows [0, 1, 2, 3], first: ['p2', 'p3', 'p4', 'p4']")
    fails(cli("datasets", "import", write_nodes(tmp_path / "ok.csv", ROWS, "csv"), e, out, "--id-type", "int"),
          f"- {tmp_path}/ok.csv: column 'node_id' has non-integer ids at rows [0, 1, 2, 3, 4], first: "
          "['p1', 'p2', 'p3', 'p4', 'p5'] (--id-type int)",
          f"- {e}: column 'src' has non-integer ids at rows [0, 1, 2, 3], first: ['p1', 'p2', 'p3', 'p1'] (--id-type int)",
          f"- {e}: column 'dst' has non-integer ids at rows [0, 1, 2, 3], first: ['p2', 'p3', 'p4', 'p4'] (--id-type int)")
    # choices are checked before any file is read, each naming its flag
    result = cli("datasets", "import", n, e, out, "--id-type", "x", "--edges-format", "xml")
    assert result.exit_code == 2 and result.stderr == (
        "Error: - --id-type x: choose one of auto, int, string\n- --edges-format xml: choose one of auto, csv, tsv, jsonl\n")
    assert not out.exists()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())

    # an empty OUT is used; an earlier graph there is refused unless --overwrite
    out.mkdir()
    assert cli("datasets", "import", n, e, out).exit_code == 0
    result = cli("datasets", "import", n, e, out)
    assert result.exit_code == 2 and result.stderr == (
        f"Error: OUT {out}: holds an earlier graph; pass --overwrite to replace it, or choose another OUT (nothing was changed)\n")
    assert cli("datasets", "import", n, e, out, "--overwrite").exit_code == 0
    assert load_graph(out).num_nodes == 5


# --- subset -----------------------------------------------------------------------------------


def test_subset_connected_deterministic_splits_kept(cli, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert cli("datasets", "subset", "cora", "--nodes", 60, "--seed", 3, a).exit_code == 0
    assert cli("datasets", "subset", "cora", "--nodes", 60, "--seed", 3, b).exit_code == 0
    assert cli("datasets", "subset", "cora", "--nodes", 60, "--seed", 4, c).exit_code == 0
    ga, gb, gc = load_graph(a), load_graph(b), load_graph(c)
    assert ga.fingerprint == gb.fingerprint != gc.fingerprint
    assert ga.num_nodes == 60 and (connected_components(60, ga.edge_index) == 0).all()
    cora = load_graph("cora")
    idx = cora.index_of(ga.node_ids)
    assert np.all(np.diff(idx) > 0)  # file order kept
    assert [ga.texts[i] == cora.texts[j] for i, j in enumerate(idx)] == [True] * 60
    assert ga.label_names == cora.label_names and (ga.labels == cora.labels[idx]).all()
    # induced: exactly the cora edges between kept nodes
    keep = set(idx.tolist())
    want = {(int(s), int(d)) for s, d in cora.edge_index.T if s in keep and d in keep}
    got = {(int(idx[s]), int(idx[d])) for s, d in ga.edge_index.T}
    assert got == want
    assert sorted(ga.named_splits) == sorted(cora.named_splits)
    full = json.loads(cora.named_splits["random_60_20_20_seed0"].read_text())
    part = json.loads(ga.named_splits["random_60_20_20_seed0"].read_text())
    kept_ids = set(ga.node_ids.tolist())
    assert part == {k: [v for v in ids if v in kept_ids] for k, ids in full.items()}
    assert sum(len(v) for v in part.values()) == 60
    meta = json.loads((a / "meta.json").read_text())
    assert meta["subset_of"]["graph"] == "cora" and meta["subset_of"]["seed"] == 3
    assert "num_nodes" not in meta and "edge_homophily" not in meta
    assert json.loads((a / "datasets_subset_config.json").read_text()) == {
        "graph": "cora", "nodes": 60, "seed": 3, "out": str(a), "overwrite": False, "format_version": 1}


def test_subset_of_user_graph_with_string_ids_and_split_column(cli, write_graph, tmp_path):
    ids = [f"n{i}" for i in range(10)]
    g = write_graph(
        {"node_id": ids, "text": [f"t{i}" for i in range(10)], "label": [i % 2 for i in range(10)],
         "split": ["train", "val"] * 5},
        {"src": ids[:-1], "dst": ids[1:]},  # a path n0 - n1 - ... - n9
    )
    out = tmp_path / "sub"
    result = cli("datasets", "subset", g, out, "--nodes", 4, "--seed", 0)
    assert result.exit_code == 0, result.output
    sub = load_graph(out)
    pos = [ids.index(v) for v in sub.node_ids.tolist()]
    assert pos == list(range(pos[0], pos[0] + 4))  # a contiguous piece of the path
    assert sub.split.tolist() == [["train", "val"][p % 2] for p in pos]
    assert sub.label_names == ["0", "1"] and sub.labels.tolist() == [p % 2 for p in pos]
    assert sub.num_edges == 3
    start = json.loads((out / "meta.json").read_text())["subset_of"]["start_node_id"]
    assert start in sub.node_ids.tolist() and f"start node '{start}'" in result.stderr


def test_subset_errors_write_nothing(cli, write_graph, tmp_path):
    out = tmp_path / "out"
    result = cli("datasets", "subset", "cora", out, "--nodes", 5000)
    assert result.exit_code == 2 and result.stderr == "Error: --nodes 5000: graph 'cora' has only 2708 nodes\n"
    result = cli("datasets", "subset", "cora", out, "--nodes", 2600)
    assert result.exit_code == 2
    assert result.stderr == "Error: --nodes 2600: graph 'cora' has no connected component that large (largest: 2485 nodes)\n"
    result = cli("datasets", "subset", "cora", out, "--nodes", 0, "--seed", -1)
    assert result.exit_code == 2 and result.stderr == "Error: --seed -1: must be in 0..4294967295\n"
    g = write_graph({"node_id": [1, 2], "text": ["a", None]}, {"src": [1], "dst": [2]})
    result = cli("datasets", "subset", g, out, "--nodes", 1)
    fails(result, f"- {g}/nodes.parquet: column 'text' has 1 null or empty text(s) at rows [1]")
    # the subset itself must be valid: here no labeled training node survives
    g2 = write_graph({"node_id": [1, 2, 3], "text": ["a", "b", "c"], "label": ["x", "y", "x"], "split": ["train", "val", "test"]},
                     {"src": [1, 2], "dst": [2, 3]}, name="g2")
    result = cli("datasets", "subset", g2, out, "--nodes", 1, "--seed", 1)
    fails(result, f"- {out}/nodes.parquet: column 'label' is present but no node with split 'train' has a label")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g", "g2"]


# --- --config on these commands -----------------------------------------------------------------


def test_config_yaml_toml_override_and_unknown_key(cli, tmp_path):
    (tmp_path / "s.yaml").write_text("graph: cora\nnodes: 30\nseed: 2\n")
    (tmp_path / "s.toml").write_text("nodes = 30\nseed = 2\n")
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert cli("datasets", "subset", "--config", tmp_path / "s.yaml", "cora", a).exit_code == 0
    assert cli("datasets", "subset", "cora", b, "--config", tmp_path / "s.toml").exit_code == 0
    assert load_graph(a).fingerprint == load_graph(b).fingerprint and load_graph(a).num_nodes == 30
    # flags override the file
    assert cli("datasets", "subset", "cora", c, "--config", tmp_path / "s.toml", "--nodes", 12).exit_code == 0
    assert load_graph(c).num_nodes == 12
    assert json.loads((c / "datasets_subset_config.json").read_text())["nodes"] == 12
    # the saved configuration is itself a valid --config (JSON)
    d = tmp_path / "d"
    assert cli("datasets", "subset", "--config", c / "datasets_subset_config.json", "cora", d).exit_code == 0
    assert load_graph(d).fingerprint == load_graph(c).fingerprint
    # unknown key: exit 2 naming it, nothing written
    (tmp_path / "bad.yaml").write_text("nodes: 5\nnode_count: 5\n")
    result = cli("datasets", "subset", "cora", tmp_path / "e", "--config", tmp_path / "bad.yaml")
    assert result.exit_code == 2
    assert "unknown key(s) node_count" in " ".join(result.stderr.replace("│", " ").split())
    assert not (tmp_path / "e").exists()
    # import and check take --config too
    n = write_nodes(tmp_path / "n.csv", ROWS, "csv", id_col="pid")
    e = write_edges(tmp_path / "e.csv", EDGE_ROWS, "csv")
    (tmp_path / "imp.toml").write_text(f'nodes = "{n}"\nedges = "{e}"\nid-col = "pid"\nid_type = "string"\n')
    result = cli("datasets", "import", "--config", tmp_path / "imp.toml", n, e, tmp_path / "imp")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "imp" / "datasets_import_config.json").read_text())["id-col"] == "pid"
    (tmp_path / "chk.yaml").write_text(f"json: {tmp_path / 'sum.json'}\n")
    assert cli("datasets", "check", "--config", tmp_path / "chk.yaml", tmp_path / "imp").exit_code == 0
    assert json.loads((tmp_path / "sum.json").read_text())["nodes"] == 5
