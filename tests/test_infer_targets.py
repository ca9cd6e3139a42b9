"""``pipeline infer --nodes/--edges``: new nodes grow the training graph after its nodes, checked
by the graph format (every problem at once, exact messages, exit status 2; through the CLI with
nothing written: test_infer_run.py); their labels are matched to the checkpoint's classes. No
model is loaded."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.errors import InputError
from pipeline.core.graph import graph_fingerprint, load_graph
from stage3_infer.targets import InferGraph, add_new_nodes, select_targets
from log_lines import untimed

NODES = {"node_id": [10, 20, 30], "text": ["a", "b", "c"], "label": ["x", "y", None], "split": ["train", "train", "test"]}
EDGES = {"src": [10, 20], "dst": [20, 30]}


def write_new(tmp_path, nodes: dict, edges: dict):
    paths = tmp_path / "new.parquet", tmp_path / "new_edges.parquet"
    pq.write_table(pa.table(nodes), paths[0])
    pq.write_table(pa.table(edges), paths[1])
    return paths


def refused(graph, paths) -> str:
    with pytest.raises(InputError) as err:
        add_new_nodes(graph, *paths, ["x", "y"])
    assert err.value.exit_code == 2
    return err.value.message


def test_new_nodes_are_appended_and_labelled_by_the_checkpoint(tmp_path, write_graph, capsys):
    graph = load_graph(write_graph(NODES, EDGES))
    n, e = write_new(tmp_path, {"node_id": [40, 50, 60], "text": ["d", "e", "f"], "label": ["y", "z", None]},
                     {"src": [40, 40, 50], "dst": [50, 10, 40]})
    g = add_new_nodes(graph, n, e, ["x", "y"])
    assert untimed(capsys.readouterr().err) == [
        f"warning: {e}: dropped 1 duplicate edge(s) (edges are undirected)",
        f"warning: {n}: label(s) ['z'] are not classes of the checkpoint (x, y); those nodes count as unlabelled",
    ]
    grown = g.graph
    assert g.num_known == 3 and g.is_new(np.arange(6)).tolist() == [False] * 3 + [True] * 3
    assert grown.node_ids.tolist() == [10, 20, 30, 40, 50, 60] and list(grown.texts) == ["a", "b", "c", "d", "e", "f"]
    assert grown.labels.tolist() == [0, 1, -1, 1, -1, -1] and grown.split.tolist() == ["train", "train", "test", None, None, None]
    assert {tuple(p) for p in grown.edge_index.T.tolist()} == {(0, 1), (1, 0), (1, 2), (2, 1), (3, 4), (4, 3), (3, 0), (0, 3)}
    assert grown.fingerprint == graph_fingerprint(grown.node_ids, grown.texts, grown.labels, grown.split, grown.edge_index)
    assert grown.fingerprint != graph.fingerprint
    assert select_targets(g, None, None, None, 0).tolist() == [3, 4, 5]  # without --split: the new nodes


def test_refusals_name_file_column_rows_and_values(tmp_path, write_graph):
    graph = load_graph(write_graph(NODES, EDGES))
    paths = n, e = write_new(tmp_path, {"node_id": [40, 20, 40], "text": ["d", "e", ""]}, {"src": [40, 40], "dst": [10, 123456]})
    assert refused(graph, paths) == (
        "invalid new nodes for graph 'g':\n"
        f"- {n}: column 'node_id' has 1 duplicate id(s) at rows [2], first: [40]\n"
        f"- {n}: column 'node_id' has 1 id(s) already in graph 'g' at rows [1], first: [20]; give new nodes unused ids "
        "(predict known nodes with --node-ids or --split)\n"
        f"- {n}: column 'text' has 1 null or empty text(s) at rows [2]\n"
        f"- {e}: column 'dst' has 1 id(s) not in {n} or graph 'g' at rows [1], first: [123456]"
    )
    paths = write_new(tmp_path, {"node_id": ["p40"], "text": ["d"]}, {"src": pa.array([], pa.string()), "dst": pa.array([], pa.string())})
    assert refused(graph, paths) == (
        "invalid new nodes for graph 'g':\n"
        f"- {n}: column 'node_id' has type string but graph 'g' column 'node_id' has type int64; mixed id types: use the same type\n"
        f"- {e}: column 'src' has type string but graph 'g' column 'node_id' has type int64; mixed id types: use the same type\n"
        f"- {e}: column 'dst' has type string but graph 'g' column 'node_id' has type int64; mixed id types: use the same type"
    )


def test_a_split_without_labelled_nodes_says_how_to_predict_unlabelled_ones(write_graph):
    nodes = {"node_id": [10, 20, 30, 40], "text": ["a", "b", "c", "d"], "label": ["x", "y", "x", None],
             "split": ["train", "train", "val", "test"]}  # its one test node has no label
    graph = load_graph(write_graph(nodes, EDGES))
    g = InferGraph(graph, graph.num_nodes)
    with pytest.raises(InputError) as err:
        select_targets(g, "test", None, None, 0)
    assert err.value.message == ("--split test: no labelled nodes in that split of graph 'g'; to predict unlabelled nodes, "
                                 "pass --split all or --node-ids FILE")
    assert select_targets(g, "all", None, None, 0).tolist() == [0, 1, 2, 3]


def test_node_ids_file_each_id_once_in_file_order_bom_and_comments_allowed(tmp_path, write_graph, capsys):
    graph = load_graph(write_graph(NODES, EDGES))
    g = InferGraph(graph, graph.num_nodes)
    ids = tmp_path / "ids.txt"
    ids.write_bytes("\ufeff30\r\n# a comment\n\n10\n30\n30\n20\n10\n".encode("utf-8"))  # a Windows editor's file
    assert select_targets(g, None, ids, None, 0).tolist() == [2, 0, 1]
    assert untimed(capsys.readouterr().err) == [
        f"warning: --node-ids {ids}: 2 id(s) listed more than once, each predicted once; first: [30, 10]"]


@pytest.mark.parametrize("line", ["²", "--5", "5.0", "0x1f", "١"])
def test_node_ids_file_of_an_int_graph_refuses_what_is_not_ascii_digits(tmp_path, write_graph, line):
    graph = load_graph(write_graph(NODES, EDGES))
    ids = tmp_path / "ids.txt"
    ids.write_text(f"10\n{line}\n")
    with pytest.raises(InputError) as err:
        select_targets(InferGraph(graph, graph.num_nodes), None, ids, None, 0)
    assert err.value.message == f"--node-ids {ids}: graph 'g' has integer ids; not integers: [{line!r}]"
