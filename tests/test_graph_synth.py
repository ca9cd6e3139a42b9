"""``pipeline datasets synth``: determinism, counts, homophily, degree skew, real class-conditional texts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.graph import load_graph
from pipeline.graph_synth import SynthConfig, synthesize
from pipeline.synth_text import real_corpus

N, C, D, H = 2000, 5, 6.0, 0.7
FILES = ("nodes.parquet", "edges.parquet", "meta.json")


def make(out: Path, **kw) -> dict:
    config = dict(nodes=N, classes=C, seed=3, homophily=H, avg_degree=D) | kw
    return synthesize(SynthConfig(out=out, **config))


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "g"
    make(out)
    return out


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in FILES}


def test_same_seed_same_files_other_seed_other_files(synth: Path, tmp_path: Path) -> None:
    make(tmp_path / "again")
    assert file_bytes(tmp_path / "again") == file_bytes(synth)
    make(tmp_path / "other", seed=4)
    other = file_bytes(tmp_path / "other")
    assert all(other[name] != file_bytes(synth)[name] for name in FILES)


def test_counts_split_and_exact_homophily(synth: Path) -> None:
    g = load_graph(synth)  # the full reader's validation
    assert (g.num_nodes, g.num_edges, g.num_classes) == (N, round(N * D / 2), C)
    assert np.bincount(g.labels, minlength=C).min() > 0
    assert g.label_names == ["Rule_Learning", "Neural_Networks", "Case_Based", "Genetic_Algorithms", "Theory"]
    src, dst = g.edge_index[:, g.edge_index[0] < g.edge_index[1]]
    assert (g.labels[src] == g.labels[dst]).sum() == round(H * g.num_edges)  # exactly the requested fraction
    sizes = {s: len(v) for s, v in g.split_indices().items()}
    assert sizes == {"train": 1200, "val": 400, "test": 400}
    meta = json.loads((synth / "meta.json").read_text())
    assert meta["edge_homophily"] == 0.7 and meta["num_undirected_edges"] == 6000
    assert meta["synth"] == {"generator": "engine-synth/1", "nodes": N, "classes": C, "seed": 3, "homophily": H,
                             "avg_degree": D, "text_words": "150:250"}


def test_degrees_are_skewed(synth: Path) -> None:
    g = load_graph(synth)
    degree = np.bincount(g.edge_index[0], minlength=N)
    assert degree.mean() == pytest.approx(D)
    assert degree.max() >= 10 * degree.mean()  # hubs
    assert np.median(degree) < degree.mean()  # most nodes below the mean: a long right tail
    assert (degree == 0).sum() <= N // 100  # every node starts an edge of its own


def test_texts_real_words_and_lengths(synth: Path) -> None:
    g = load_graph(synth)
    vocab = {w.lower() for w in real_corpus()[0]}
    words = [t.split() for t in g.texts[:200]]
    assert all(150 <= len(w) <= 250 for w in words)
    assert {w.rstrip(".").lower() for ws in words for w in ws} <= vocab
    assert all(t[0].isupper() and t.endswith(".") for t in g.texts[:200])


def test_texts_are_class_conditional(synth: Path) -> None:
    """Multinomial naive Bayes fit on the train split tells test-split classes apart."""
    g = load_graph(synth)
    vocab = {w: i for i, w in enumerate(sorted({w.lower() for w in real_corpus()[0]}))}
    counts = np.zeros((N, len(vocab)))
    for i, text in enumerate(g.texts):
        ids = [vocab[w.rstrip(".").lower()] for w in text.split()]
        np.add.at(counts[i], ids, 1)
    split = g.split_indices()
    per_class = np.stack([counts[split["train"]][g.labels[split["train"]] == c].sum(0) for c in range(C)]) + 1
    scores = counts[split["test"]] @ np.log(per_class / per_class.sum(1, keepdims=True)).T
    accuracy = (scores.argmax(1) == g.labels[split["test"]]).mean()
    assert accuracy > 0.95, accuracy


def test_mean_length_homophily_zero_and_many_classes(tmp_path: Path) -> None:
    summary = make(tmp_path / "g", nodes=600, classes=20, homophily=0.0, avg_degree=3, text_words="40")
    g = load_graph(tmp_path / "g")
    src, dst = g.edge_index
    assert not (g.labels[src] == g.labels[dst]).any()
    assert g.num_edges == 900 and g.num_classes == 20
    assert g.label_names[13:15] == ["Rule_Learning_2", "Neural_Networks_2"]  # 13 real classes, then reused
    assert 36 <= summary["text_words_mean"] <= 44


def test_cli_writes_exact_files_and_refuses_bad_flags(cli, tmp_path: Path) -> None:
    out = tmp_path / "g"
    result = cli("datasets", "synth", "--nodes", "50", "--classes", "3", "--avg-degree", "2", "--check", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [".pipeline-artifact.json", "datasets_synth_config.json", "edges.parquet", "meta.json", "nodes.parquet"]
    assert json.loads((out / "datasets_synth_config.json").read_text())["nodes"] == 50
    assert load_graph(out).num_edges == 50
    again = cli("datasets", "synth", "--nodes", "50", out)
    assert again.exit_code == 2 and f"OUT {out}: holds an earlier graph; pass --overwrite to replace it" in again.output

    bad = cli("datasets", "synth", "--nodes", "5", "--classes", "1", "--homophily", "1.5", "--text-words", "9:3", tmp_path / "bad")
    assert bad.exit_code == 2
    lines = re.findall(r"- (.*)", bad.output)
    assert lines == [
        "--nodes 5: must be in 10..100000000",
        "--classes 1: must be in 2..1000",
        "--homophily 1.5: must be in [0, 1] (fraction of intra-class edges)",
        "--avg-degree 5.0: must be > 0 and at most (nodes - 1) / 2 = 2",
        "--text-words 9:3: expected MIN:MAX (e.g. 150:250) or a mean (e.g. 160); need 1 <= MIN <= MAX",
    ]
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad*"))
