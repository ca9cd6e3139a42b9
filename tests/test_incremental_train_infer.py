"""A grown graph's second night: ``pipeline train --init`` warm-starts from the previous run (and
refuses another architecture, rungs, classes or LLM, naming what differs); ``pipeline infer
--new-only SINCE`` predicts only the nodes SINCE (a cache or a run) does not hold, and the
predictions carry the graph fingerprint. Real MiniLM on a Cora slice that grows from 40 to 48 nodes.
"""

from __future__ import annotations

import json
import re
import shutil

import pyarrow.parquet as pq
import pytest
import torch

from cora_slice import NIGHT_TRAIN as TRAIN
from cora_slice import write_cora_slice
from pipeline.core.errors import InputError
from pipeline.core.graph import load_graph


def weights(run_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "seed_0" / "model.safetensors"))


def test_warm_start_begins_from_the_previous_run(nights) -> None:
    from stage2_train.config import TrainConfig
    from stage2_train.run import run as train

    root, run1, v2_cache = nights.root, nights.run1, nights.v2_cache
    still = dict(TRAIN, epochs=1, lr=1e-12, weight_decay=0.0)  # a step too small to move: the run keeps its start
    train(TrainConfig(cache=v2_cache, out=root / "warm", init=run1, **still))
    train(TrainConfig(cache=v2_cache, out=root / "cold", **still))
    before, warm, cold = weights(run1), weights(root / "warm"), weights(root / "cold")
    assert all(torch.allclose(warm[k], before[k], atol=1e-6) for k in before)
    assert not all(torch.allclose(cold[k], before[k], atol=1e-3) for k in before)
    assert json.loads((root / "warm" / "checkpoint.json").read_text())["init"] == str(run1)


def test_warm_start_refusals(nights, tmp_path, cli) -> None:
    from stage2_train.config import TrainConfig
    from stage2_train.run import run as train

    run1, v2_cache = nights.run1, nights.v2_cache
    out = tmp_path / "run2"
    result = cli("train", v2_cache, "--out", out, "--init", run1, "--hidden-channels", "16", "--gnn", "gcn", "--epochs", "1")
    assert result.exit_code == 2, result.output
    message = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())
    assert (f"--init {run1}: cannot warm-start from it: --hidden-channels: {run1} has hidden_channels 32, this run 16; "
            f"--gnn: {run1} has gnn 'sage', this run 'gcn'") in message, message
    assert not out.exists()
    with pytest.raises(InputError, match=r"--arch: .* has arch 'ladder', this run 'mlp'"):
        train(TrainConfig(cache=v2_cache, out=out, init=run1, arch="mlp", **{k: v for k, v in TRAIN.items() if k != "lr"}))
    with pytest.raises(InputError, match=r"--rungs: .* reads LLM states \[0, 1, 2, 3, 4, 5, 6\], this run \[0, 6\]"):
        train(TrainConfig(cache=v2_cache, out=out, init=run1, rungs=(0, 6), **TRAIN))
    other = tmp_path / "other"  # a run on other classes and another LLM: its recorded config says so
    shutil.copytree(run1, other)
    config = json.loads((other / "checkpoint.json").read_text())
    config["label_names"] = config["label_names"][::-1]
    (other / "checkpoint.json").write_text(json.dumps(config))
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["weights_sha256"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"classes: .* has \['Probabilistic_Methods', .*; cache: .* was trained on weights_sha256 '0000000000000000'"):
        train(TrainConfig(cache=v2_cache, out=out, init=other, **TRAIN))
    assert not out.exists()


def test_new_only_predicts_the_added_nodes_with_the_fingerprint(nights, cli) -> None:
    from stage2_train.config import TrainConfig
    from stage2_train.run import run as train
    from stage3_infer.config import InferConfig
    from stage3_infer.run import run as infer

    root, v2, v1_cache, run1, v2_cache = nights.root, nights.v2_graph, nights.v1_cache, nights.run1, nights.v2_cache
    train(TrainConfig(cache=v2_cache, out=root / "run2", init=run1, **TRAIN))
    graph, old = load_graph(v2), load_graph(write_cora_slice(root / "v1-again", 40).source)
    added = [i for i in graph.node_ids.tolist() if i not in set(old.node_ids.tolist())]
    assert len(added) == 8
    for since in (v1_cache, run1):  # an earlier cache, or the run that read it
        out = root / f"pred-{since.name}"
        summary = infer(InferConfig(root / "run2", out, new_only=since))
        table = pq.read_table(out / "predictions.parquet")
        assert table.column("node_id").to_pylist() == added
        assert table.schema.metadata[b"graph_fingerprint"].decode() == graph.fingerprint
        assert summary["graph_fingerprint"] == graph.fingerprint and summary["num_targets"] == 8
    result = cli("infer", "--checkpoint", root / "run2", "--out", root / "bad", "--new-only", v1_cache, "--split", "val")
    assert result.exit_code == 2 and "--split and --new-only: choose the targets one way" in result.output, result.output
    assert not (root / "bad").exists()
