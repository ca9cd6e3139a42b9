"""The text-graph input format: built-ins, every validation case through the real CLI, writer."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.errors import InputError
from pipeline.core.graph import load_graph
from pipeline.core.graph_format import graph_edges_table, read_graph_folder, read_new_nodes, write_graph_folder
from log_lines import untimed

NODES = {"node_id": [10, 20, 30], "text": ["a", "b", "c"]}
EDGES = {"src": [10, 20], "dst": [20, 30]}


def check_fails(cli, folder) -> list[str]:
    """Run `pipeline datasets check FOLDER`, expect exit 2, return the problem lines."""
    result = cli("datasets", "check", folder)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert lines[0] == f"Error: invalid graph '{folder.name}':"
    assert result.stdout == ""
    return lines[1:]


# --- built-ins -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, nodes, edges, classes",
    [("cora", 2708, 5278, 7), ("citeseer", 3186, 4225, 6)],  # the counts the source datasets state
)
def test_builtin_counts(name, nodes, edges, classes):
    g = load_graph(name)
    assert (g.num_nodes, g.num_edges, g.num_classes) == (nodes, edges, classes)
    assert (g.labels >= 0).all()
    assert g.edge_index.shape == (2, 2 * edges)
    assert not (g.edge_index[0] == g.edge_index[1]).any()  # no self-loops
    assert g.node_ids.tolist() == list(range(nodes))


def test_builtin_splits():
    cora = load_graph("cora")
    sizes = lambda g, s: tuple(len(v) for v in g.split_indices(s).values())  # noqa: E731
    assert sizes(cora, "planetoid_public") == (140, 500, 1000)
    for seed in range(5):
        assert sizes(cora, f"random_60_20_20_seed{seed}") == (1624, 542, 542)
    citeseer = load_graph("citeseer")
    for seed in range(5):
        assert f"random_60_20_20_seed{seed}" in citeseer.named_splits
        assert sizes(citeseer, f"per_class20_val500_test1000_seed{seed}") == (120, 500, 1000)
    assert cora.label_names[0] == "Rule_Learning" and citeseer.num_classes == 6


def test_real_process_exit_status_and_plain_stderr(write_graph):
    """One run through the installed entry point: no TTY, real exit status, plain lines."""
    g = write_graph({"node_id": [1, 1], "text": ["a", "b"]}, {"src": [1], "dst": [3]})
    proc = subprocess.run([sys.executable, "-m", "pipeline", "datasets", "check", str(g)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (
        f"Error: invalid graph 'g':\n"
        f"- {g}/nodes.parquet: column 'node_id' has 1 duplicate id(s) at rows [1], first: [1]\n"
        f"- {g}/edges.parquet: column 'dst' has 1 id(s) not in {g}/nodes.parquet at rows [0], first: [3]\n"
    )


def test_datasets_listing(cli):
    result = cli("datasets")
    assert result.exit_code == 0, result.output
    assert "cora" in result.stdout and "2708" in result.stdout and "5278" in result.stdout
    assert "citeseer" in result.stdout and "3186" in result.stdout and "4225" in result.stdout


def test_unknown_graph_name(cli, tmp_path):
    result = cli("datasets", "check", tmp_path / "nope")
    assert result.exit_code == 2
    assert result.stderr == f"Error: graph '{tmp_path / 'nope'}': not a built-in dataset (cora, citeseer) and no such folder\n"


# --- every validation case, through `pipeline datasets check` -----------------------------------


def test_missing_files(cli, write_graph):
    g = write_graph(None, None)
    assert check_fails(cli, g) == [
        f"- {g}/nodes.parquet: file not found (a graph folder needs nodes.parquet and edges.parquet)",
        f"- {g}/edges.parquet: file not found (a graph folder needs nodes.parquet and edges.parquet)",
    ]


def test_unreadable_parquet(cli, write_graph):
    g = write_graph(NODES, EDGES)
    (g / "edges.parquet").write_text("not parquet")
    [line] = check_fails(cli, g)
    assert line.startswith(f"- {g}/edges.parquet: not a readable Parquet file (")


def test_missing_columns(cli, write_graph):
    g = write_graph({"id": [1], "body": ["x"]}, {"from": [1], "dst": [1]})
    assert check_fails(cli, g) == [
        f"- {g}/nodes.parquet: missing column(s) ['node_id', 'text'] (columns: ['body', 'id'])",
        f"- {g}/edges.parquet: missing column(s) ['src'] (columns: ['dst', 'from'])",
    ]


def test_wrong_types(cli, write_graph):
    g = write_graph(
        {"node_id": [1.0, 2.0], "text": [1, 2], "label": [0.5, 1.5], "split": [1, 2]},
        {"src": [1.0], "dst": [True]},
    )
    assert check_fails(cli, g) == [
        f"- {g}/nodes.parquet: column 'node_id' has type double; expected int64 or string",
        f"- {g}/nodes.parquet: column 'text' has type int64; expected string",
        f"- {g}/nodes.parquet: column 'label' has type double; expected string or integer (null = unlabeled)",
        f"- {g}/nodes.parquet: column 'split' has type int64; expected string (train, val, test or null)",
        f"- {g}/edges.parquet: column 'src' has type double; expected int64 or string (the type of node_id)",
        f"- {g}/edges.parquet: column 'dst' has type bool; expected int64 or string (the type of node_id)",
    ]


def test_duplicate_and_null_ids(cli, write_graph):
    g = write_graph({"node_id": ["a", "b", "a", "c", "b"], "text": list("vwxyz")}, {"src": ["a"], "dst": ["zz"]})
    assert check_fails(cli, g) == [
        f"- {g}/nodes.parquet: column 'node_id' has 2 duplicate id(s) at rows [2, 4], first: ['a', 'b']",
        f"- {g}/edges.parquet: column 'dst' has 1 id(s) not in {g}/nodes.parquet at rows [0], first: ['zz']",
    ]
    g2 = write_graph({"node_id": [10, None, 20, None], "text": list("wxyz")}, {"src": [10], "dst": [20]}, name="g2")
    assert check_fails(cli, g2) == [f"- {g2}/nodes.parquet: column 'node_id' has 2 null value(s) at rows [1, 3]"]


def test_null_empty_text(cli, write_graph):
    texts = ["ok", None, "", "   ", "fine", "", "", "", ""]
    g = write_graph({"node_id": list(range(9)), "text": texts}, {"src": [0], "dst": [1]})
    assert check_fails(cli, g) == [
        f"- {g}/nodes.parquet: column 'text' has 7 null or empty text(s) at rows [1, 2, 3, 5, 6] (+2 more)"
    ]


def test_edges_to_unknown_ids_and_null_ends(cli, write_graph):
    g = write_graph(NODES, {"src": [10, 99, 20, None], "dst": [20, 30, 77, 10]})
    assert check_fails(cli, g) == [
        f"- {g}/edges.parquet: column 'src' has 1 null value(s) at rows [3]",
        f"- {g}/edges.parquet: column 'src' has 1 id(s) not in {g}/nodes.parquet at rows [1], first: [99]",
        f"- {g}/edges.parquet: column 'dst' has 1 id(s) not in {g}/nodes.parquet at rows [2], first: [77]",
    ]


def test_mixed_id_types(cli, write_graph):
    g = write_graph(NODES, {"src": ["10", "20"], "dst": [20, 30]})
    assert check_fails(cli, g) == [
        f"- {g}/edges.parquet: column 'src' has type string but {g}/nodes.parquet column 'node_id' has type int64; "
        "mixed id types: use the same type"
    ]


def test_unknown_split_values(cli, write_graph):
    g = write_graph({**NODES, "label": ["x", "y", "x"], "split": ["train", "testing", "dev"]}, EDGES)
    assert check_fails(cli, g) == [
        f"- {g}/nodes.parquet: column 'split' has unknown value(s) ['dev', 'testing'] at rows [1, 2]; "
        "allowed: train, val, test or null"
    ]


def test_labels_without_labeled_training_node(cli, write_graph):
    g = write_graph({**NODES, "label": [None, "y", "x"], "split": ["train", "val", "test"]}, EDGES)
    assert check_fails(cli, g) == [
        f"- {g}/nodes.parquet: column 'label' is present but no node with split 'train' has a label"
    ]
    g2 = write_graph({**NODES, "label": pa.array([None, None, None], pa.string())}, EDGES, name="g2")
    assert check_fails(cli, g2) == [
        f"- {g2}/nodes.parquet: column 'label' is present but every value is null; drop the column or label training nodes"
    ]


def test_meta_and_named_splits(cli, write_graph):
    g = write_graph(
        {**NODES, "label": ["x", "y", "q"]},
        EDGES,
        meta={"label_names": ["x", "y"]},
        splits={"s1": {"train": [10, 99], "test": [10], "dev": []}},
    )
    (g / "splits" / "broken.json").write_text("{")
    lines = check_fails(cli, g)
    assert lines[0].startswith(f"- {g}/splits/broken.json: not valid JSON (")
    assert lines[1:] == [
        f"- {g}/nodes.parquet: column 'label' has value(s) ['q'] not in meta.json label_names",
        f"- {g}/splits/s1.json: unknown key(s) ['dev']; allowed: train, val, test",
        f"- {g}/splits/s1.json: 'train' has 1 id(s) not in the graph, first: [99]",
        f"- {g}/splits/s1.json: 'test' shares 1 id(s) with 'train', first: [10]",
    ]


def test_meta_format_version(cli, write_graph, tmp_path):
    """The pipeline's meta.json carries format_version 1; a user's meta.json without one loads;
    one of another version is refused, naming the file and version."""
    user = write_graph(NODES, EDGES, meta={"label_names": ["x", "y"]})
    assert cli("datasets", "check", user).exit_code == 0
    out = tmp_path / "written"
    write_graph_folder(out, pa.table(NODES), pa.table(EDGES), meta={"label_names": ["x", "y"]})
    meta = json.loads((out / "meta.json").read_text())
    assert meta == {"label_names": ["x", "y"], "format_version": 1}
    assert cli("datasets", "check", out).exit_code == 0
    (out / "meta.json").write_text(json.dumps({**meta, "format_version": 2}))
    result = cli("datasets", "check", out)
    assert (result.exit_code, result.stderr) == (2, f"Error: {out}/meta.json: format version 2, this version of the pipeline reads 1; "
                                                    f"write {out} anew with this version's `pipeline datasets` command\n"), result.output


def test_every_problem_reported_at_once(cli, write_graph):
    g = write_graph(
        {"node_id": [1, 2, 2, None], "text": ["a", "", "c", "d"], "split": ["train", "x", None, None]},
        {"src": [1], "dst": ["1"]},
    )
    (g / "meta.json").write_text("[1,")
    lines = check_fails(cli, g)
    assert len(lines) == 6
    assert lines[0].startswith(f"- {g}/meta.json: not valid JSON (")
    assert lines[1:] == [
        f"- {g}/nodes.parquet: column 'node_id' has 1 null value(s) at rows [3]",
        f"- {g}/nodes.parquet: column 'node_id' has 1 duplicate id(s) at rows [2], first: [2]",
        f"- {g}/nodes.parquet: column 'text' has 1 null or empty text(s) at rows [1]",
        f"- {g}/nodes.parquet: column 'split' has unknown value(s) ['x'] at rows [1]; allowed: train, val, test or null",
        f"- {g}/edges.parquet: column 'dst' has type string but {g}/nodes.parquet column 'node_id' has type int64; "
        "mixed id types: use the same type",
    ]


# --- what a valid graph becomes ---------------------------------------------------------------


def test_self_loops_and_duplicates_dropped_with_warning(cli, write_graph):
    g = write_graph(NODES, {"src": [10, 20, 30, 20, 10], "dst": [20, 20, 30, 10, 20]})
    result = cli("datasets", "check", g)
    assert result.exit_code == 0, result.output
    assert untimed(result.stderr) == [
        f"warning: {g}/edges.parquet: dropped 2 self-loop(s) at rows [1, 2]",
        f"warning: {g}/edges.parquet: dropped 2 duplicate edge(s) (edges are undirected)",
    ]
    graph = load_graph(g)
    assert graph.num_edges == 1
    assert graph.edge_index.tolist() == [[0, 1], [1, 0]]


@pytest.mark.parametrize("ids", [[7, 3, 5], ["paper-7", "paper-3", "paper-5"]])
def test_string_and_int_ids_map_back(write_graph, ids):
    g = write_graph(
        {"node_id": ids, "text": ["x", "y", "z"], "label": ["b", "a", None], "split": ["train", "test", None]},
        {"src": [ids[0]], "dst": [ids[2]]},
        splits={"mine": {"train": [ids[1]], "val": [], "test": [ids[0]]}},
    )
    graph = load_graph(g)
    assert graph.node_ids.tolist() == ids  # dense index i <-> file row i
    assert graph.labels.tolist() == [1, 0, -1] and graph.label_names == ["a", "b"]
    assert graph.edge_index.tolist() == [[0, 2], [2, 0]]
    assert graph.split_indices("mine")["train"].tolist() == [1]
    assert graph.split_indices()["train"].tolist() == [0]
    assert graph_edges_table(graph).to_pydict() == {"src": [ids[0]], "dst": [ids[2]]}
    assert graph.index_of([ids[2], ids[0]]).tolist() == [2, 0]
    with pytest.raises(InputError, match="1 node id"):
        graph.index_of(["nope" if isinstance(ids[0], int) else 0])


def test_int_labels_sorted_numerically(write_graph):
    g = write_graph({"node_id": list(range(12)), "text": ["t"] * 12, "label": list(range(11, -1, -1))}, {"src": [0], "dst": [1]})
    graph = load_graph(g)
    assert graph.label_names == [str(i) for i in range(12)]
    assert graph.labels.tolist() == list(range(11, -1, -1))


# --- new nodes growing a graph ----------------------------------------------------------------


def new_nodes(tmp_path, graph, nodes: dict, edges: dict, hint: str = ""):
    """``read_new_nodes`` on the given tables written as ``new.parquet`` / ``new_edges.parquet``."""
    paths = tmp_path / "new.parquet", tmp_path / "new_edges.parquet"
    for path, table in zip(paths, (nodes, edges)):
        pq.write_table(table if isinstance(table, pa.Table) else pa.table(table), path)
    return read_new_nodes(graph, *paths, clash_hint=hint), paths


def new_nodes_refused(tmp_path, graph, nodes: dict, edges: dict, hint: str = "") -> list[str]:
    with pytest.raises(InputError) as err:
        new_nodes(tmp_path, graph, nodes, edges, hint)
    lines = err.value.message.splitlines()
    assert lines[0] == f"invalid new nodes for graph '{graph.name}':"
    return lines[1:]


def test_new_nodes_problems_reported_together(tmp_path, write_graph):
    graph = load_graph(write_graph(NODES, EDGES))
    n, e = tmp_path / "new.parquet", tmp_path / "new_edges.parquet"
    nodes = {"node_id": [40, 20, 40, None, 50], "text": ["d", "e", " ", "f", None]}
    assert new_nodes_refused(tmp_path, graph, nodes, {"src": [40, 50, 99], "dst": [10, 77, 40]}, "; pick unused ids") == [
        f"- {n}: column 'node_id' has 1 null value(s) at rows [3]",
        f"- {n}: column 'node_id' has 1 duplicate id(s) at rows [2], first: [40]",
        f"- {n}: column 'node_id' has 1 id(s) already in graph 'g' at rows [1], first: [20]; pick unused ids",
        f"- {n}: column 'text' has 2 null or empty text(s) at rows [2, 4]",
        f"- {e}: column 'src' has 1 id(s) not in {n} or graph 'g' at rows [2], first: [99]",
        f"- {e}: column 'dst' has 1 id(s) not in {n} or graph 'g' at rows [1], first: [77]",
    ]


def test_new_nodes_of_another_id_type(tmp_path, write_graph):
    graph = load_graph(write_graph(NODES, EDGES))
    n, e = tmp_path / "new.parquet", tmp_path / "new_edges.parquet"
    assert new_nodes_refused(tmp_path, graph, {"node_id": ["p1"], "text": ["d"]}, {"src": ["p1"], "dst": [10]}) == [
        f"- {n}: column 'node_id' has type string but graph 'g' column 'node_id' has type int64; mixed id types: use the same type",
        f"- {e}: column 'src' has type string but graph 'g' column 'node_id' has type int64; mixed id types: use the same type",
    ]
    assert new_nodes_refused(tmp_path, graph, {"node_id": pa.array([], pa.int64()), "text": pa.array([], pa.string())},
                             {"src": [10], "dst": [20]}) == [f"- {n}: no rows (give at least one new node)"]


@pytest.mark.parametrize("ids", [[7, 3, 5], ["paper-7", "paper-3", "paper-5"]])
def test_new_nodes_join_each_other_and_the_graph(tmp_path, write_graph, capsys, ids):
    graph = load_graph(write_graph({"node_id": ids, "text": ["x", "y", "z"]}, {"src": [ids[0]], "dst": [ids[1]]}))
    a, b = (8, 9) if isinstance(ids[0], int) else ("new-a", "new-b")
    id_type = pa.int32() if isinstance(a, int) else pa.string()  # another int width is the same kind
    new, (_, e) = new_nodes(tmp_path, graph, {"node_id": pa.array([a, b], id_type), "text": ["u", "v"], "label": ["c", None]},
                            {"src": [a, b, b, ids[1]], "dst": [b, ids[2], b, ids[0]]})
    assert new.ids.tolist() == [a, b] and list(new.texts) == ["u", "v"] and new.labels == ["c", None]
    # indices: the graph's 0..2, then the new nodes 3, 4; the graph's edge 0-1 kept, its repeat dropped
    assert new.edge_index.tolist() == [[0, 1, 2, 3, 4, 4], [1, 0, 4, 4, 2, 3]]
    assert untimed(capsys.readouterr().err) == [
        f"warning: {e}: dropped 1 self-loop(s) at rows [2]",
        f"warning: {e}: dropped 1 duplicate edge(s) (edges are undirected)",
    ]


# --- the writer -------------------------------------------------------------------------------


def test_write_graph_folder_atomic_and_validated(tmp_path):
    nodes = pa.table({"node_id": pa.array(["a", "b"]), "text": pa.array(["x", "y"]), "label": pa.array([1, 0])})
    edges = pa.table({"src": pa.array(["a"]), "dst": pa.array(["b"])})
    out = tmp_path / "sub" / "out"
    graph = write_graph_folder(
        out, nodes, edges, meta={"label_names": ["0", "1"]}, splits={"s": {"train": ["a"], "test": ["b"]}},
        extra_files={"note.txt": "hello\n", "cfg.json": lambda p: p.write_text("{}")},
    )
    assert sorted(p.name for p in out.iterdir()) == [".pipeline-artifact.json", "cfg.json", "edges.parquet", "meta.json", "nodes.parquet", "note.txt", "splits"]
    assert graph.named_splits["s"] == out / "splits" / "s.json"
    assert graph.split_indices("s")["test"].tolist() == [1]
    again = read_graph_folder(out, name="out", source=str(out))
    assert again.fingerprint == graph.fingerprint
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # no temporary folder left

    # bad content: nothing written; existing OUT is refused unless overwrite
    bad = tmp_path / "bad"
    with pytest.raises(InputError) as err:
        write_graph_folder(bad, nodes, pa.table({"src": pa.array(["a"]), "dst": pa.array(["q"])}))
    assert f"- {bad}/edges.parquet: column 'dst' has 1 id(s) not in {bad}/nodes.parquet at rows [0], first: ['q']" in str(err.value)
    assert not bad.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["sub"]
    with pytest.raises(InputError, match="holds an earlier graph; pass --overwrite to replace it, or choose another OUT"):
        write_graph_folder(out, nodes, edges)
    write_graph_folder(out, nodes.slice(0, 1), pa.table({"src": pa.array([], pa.string()), "dst": pa.array([], pa.string())}), overwrite=True)
    assert load_graph(out).num_nodes == 1 and not (out / "note.txt").exists()
    (tmp_path / "notgraph").mkdir()
    (tmp_path / "notgraph" / "precious.txt").write_text("keep")
    with pytest.raises(InputError, match=r"exists and was not written by `pipeline datasets` .* \(nothing was changed\)"):
        write_graph_folder(tmp_path / "notgraph", nodes, edges, overwrite=True)
    assert [p.name for p in (tmp_path / "notgraph").iterdir()] == ["precious.txt"]
