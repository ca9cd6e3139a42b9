"""Loading large graphs: lazy Arrow texts, block-independent fingerprint, vectorised checks."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core import text_column
from pipeline.core.errors import InputError
from pipeline.core.graph import graph_fingerprint, load_graph
from pipeline.core.graph_format import _symmetrize, graph_edges_table, read_nodes_table
from pipeline.core.text_column import TextColumn


def _copy_cora(folder, cora, row_group_size: int, text_type=pa.string(), nodes=None):
    folder.mkdir()
    nodes = read_nodes_table(cora) if nodes is None else nodes
    nodes = nodes.set_column(nodes.column_names.index("text"), "text", nodes.column("text").cast(text_type))
    pq.write_table(nodes, folder / "nodes.parquet", row_group_size=row_group_size)
    pq.write_table(graph_edges_table(cora), folder / "edges.parquet")
    (folder / "meta.json").write_text(json.dumps({"label_names": cora.label_names}))  # same class order
    return folder


def test_lazy_texts_read_row_groups_on_demand(tmp_path, cora, monkeypatch):
    monkeypatch.setattr(text_column, "IN_MEMORY_BYTES", 0)  # Cora's 3.6 MB of text counts as large
    g = load_graph(_copy_cora(tmp_path / "lazy", cora, row_group_size=500))
    texts = g.texts
    assert (repr(texts), texts.lazy, len(texts), g.num_nodes) == ("TextColumn(2708 texts, lazy, 6 row groups)", True, 2708, 2708)
    ref = list(cora.texts)
    assert texts[0] == ref[0] and texts[-1] == ref[-1] and texts[1234] == ref[1234]
    assert texts[498:503] == ref[498:503] and texts[::700] == ref[::700]
    rows = [2700, 3, 1500, 3, 999]
    assert texts.take(rows) == [ref[i] for i in rows]
    assert list(texts) == ref and texts == ref and texts == cora.texts
    assert len(texts._cache) <= text_column.KEEP_BLOCKS
    with pytest.raises(IndexError):
        texts[2708]
    again = pickle.loads(pickle.dumps(texts))  # reopens the file
    assert again == ref and again.digest() == texts.digest()
    # same content, other layout and string type: same fingerprint as the in-memory graph
    assert g.fingerprint == cora.fingerprint
    g2 = load_graph(_copy_cora(tmp_path / "large", cora, row_group_size=400, text_type=pa.large_string()))
    assert (g2.texts.lazy, g2.fingerprint) == (True, cora.fingerprint)


def test_fingerprint_hashes_content_not_layout(cora):
    args = (cora.node_ids, cora.labels, cora.split, cora.edge_index)
    from_list = graph_fingerprint(args[0], list(cora.texts), *args[1:])
    chunked = TextColumn.from_array(pa.chunked_array([pa.array(list(cora.texts)[:7]), pa.array(list(cora.texts)[7:])]))
    assert from_list == graph_fingerprint(args[0], chunked, *args[1:]) == cora.fingerprint
    assert pickle.loads(pickle.dumps(chunked)) == list(cora.texts)
    changed = list(cora.texts)
    changed[5] += " "
    assert graph_fingerprint(args[0], changed, *args[1:]) != cora.fingerprint
    moved = list(cora.texts)  # same bytes, one character moved to the next text
    moved[0], moved[1] = moved[0][:-1], moved[0][-1] + moved[1]
    assert graph_fingerprint(args[0], moved, *args[1:]) != cora.fingerprint
    string_ids = np.asarray([str(v) for v in cora.node_ids], dtype=object)
    assert graph_fingerprint(string_ids, cora.texts, *args[1:]) != cora.fingerprint
    split = cora.split.copy()
    split[0] = "train"
    assert graph_fingerprint(args[0], cora.texts, cora.labels, split, cora.edge_index) != cora.fingerprint


def test_problems_in_later_row_groups_name_file_rows(tmp_path, cora, monkeypatch):
    monkeypatch.setattr(text_column, "IN_MEMORY_BYTES", 0)
    nodes = read_nodes_table(cora)
    texts = nodes.column("text").to_pylist()
    texts[1700], texts[2705] = " \x1c\u3000\n", None  # whitespace as Python's str.isspace() sees it
    nodes = nodes.set_column(nodes.column_names.index("text"), "text", pa.array(texts, pa.string()))
    folder = _copy_cora(tmp_path / "bad", cora, row_group_size=500, nodes=nodes)
    with pytest.raises(InputError) as err:
        load_graph(folder)
    f = folder / "nodes.parquet"
    assert err.value.message == (
        f"invalid graph 'bad':\n"
        f"- {f}: column 'text' has 2 null or empty text(s) at rows [1700, 2705]"
    )


def test_named_split_ids_checked_by_type(tmp_path, cora, write_graph):
    nodes = {"node_id": ["a", "b", "c", "d"], "text": ["one", "two", "three", "four"], "label": ["x", "y", "x", None]}
    folder = write_graph(nodes, {"src": ["a", "b"], "dst": ["b", "c"]},
                         splits={"s": {"train": ["a", 1, True, "zz"], "val": ["a", "b"], "test": ["d"]}})
    with pytest.raises(InputError) as err:
        load_graph(folder)
    f = folder / "splits" / "s.json"
    assert err.value.message == (
        "invalid graph 'g':\n"
        f"- {f}: 'train' has 3 id(s) not in the graph, first: [1, True, 'zz']\n"
        f"- {f}: 'val' shares 1 id(s) with 'train', first: ['a']"
    )


def test_symmetrize_matches_reference():
    rng = np.random.default_rng(0)
    n = 500
    pairs = rng.integers(0, n, size=(2, 4000))
    got = _symmetrize(pairs, "edges.parquet", n)
    pairs = pairs[:, pairs[0] != pairs[1]]
    keys = np.unique(np.minimum(pairs[0], pairs[1]) * n + np.maximum(pairs[0], pairs[1]))
    lo, hi = keys // n, keys % n
    both = np.concatenate([np.stack([lo, hi]), np.stack([hi, lo])], axis=1)
    assert np.array_equal(got, both[:, np.lexsort((both[1], both[0]))])
