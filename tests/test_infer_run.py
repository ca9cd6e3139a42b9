"""``pipeline infer`` end to end on a real checkpoint: 45 Cora nodes, MiniLM, encoded and trained
by stages 1 and 2, then predicted with real layer stepping.

Covers: ``none`` reproduces the predictions training computed from the cache; early exit runs
fewer LLM layers and answers as the cached replay of the same policy; an inductive new node
linked to training nodes gets a prediction; every refusal through the CLI (exit 2, exact
message, nothing written).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.core.bench_json import read_bench
from pipeline.core.graph import load_graph
from stage3_infer.config import InferConfig
from stage2_train.checkpoint import load_checkpoint
from stage2_train.exit_policies import decide, parse_exit, resolve_exit
from stage3_infer.predictions import read_predictions
from stage3_infer.run import run

NODES = 45
LAYERS = list(range(7))  # MiniLM: 6 layers -> states 0..6


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cora_cache):
    """(root, run dir, graph) of a 45-node Cora ladder trained on a MiniLM cache."""
    from stage2_train.config import TrainConfig
    from stage2_train.run import run as train

    root = tmp_path_factory.mktemp("infer")
    graph_dir, cache = cora_cache(NODES, max_length=32, block_size=16)
    train(TrainConfig(cache=cache, out=root / "run", epochs=3, patience=3, batch_size=16, hidden_channels=32, dropout=0.0, lr=3e-3,
                      depth="full"))  # every rung kept: the tests below climb all 7
    return root, root / "run", load_graph(graph_dir)


def _cached_logits(run_dir, targets):
    """What training computed: the ladder on cached states, over the deterministic eval subgraphs."""
    from stage2_train.checkpoint import load_checkpoint
    from stage2_train.data import CachedFeatures, open_train_data
    from stage2_train.sampling import Sampler

    ck = load_checkpoint(run_dir)
    data = open_train_data(ck.cache_path, tuple(ck.layers), None, "ladder")
    sub = Sampler(data.graph.edge_index, data.graph.num_nodes, **ck.sampler).sample(targets)
    with torch.no_grad():
        return ck.model(CachedFeatures(data)(sub.nodes), sub), ck  # (S, B, C)


def test_none_reproduces_training_predictions(trained):
    root, run_dir, graph = trained
    summary = run(InferConfig(run_dir, root / "pred_none", exit="none"))
    test = np.flatnonzero(graph.split == "test")
    logits, ck = _cached_logits(run_dir, test)
    t = read_predictions(root / "pred_none").to_pydict()
    assert t["node_id"] == graph.node_ids[test].tolist()
    want = [ck.label_names[i] for i in logits[-1].argmax(-1).tolist()]
    assert t["predicted_label"] == want  # fresh fp32 states rounded to fp16 == the fp16 cache's answers
    assert np.allclose(t["confidence"], torch.softmax(logits[-1], -1).max(-1).values.numpy(), atol=2e-3)
    assert t["exit_rung"] == [6] * len(test) and t["exit_layer"] == [6] * len(test)
    assert summary["accuracy"] == ck.summary["per_seed"][0]["test_acc"]  # the test accuracy training reported
    assert summary["llm_layer_evals"] == summary["llm_layer_evals_full_depth"] == len(test) * 6
    assert sorted(p.name for p in (root / "pred_none").iterdir()) == [".pipeline-artifact.json", "infer_config.json", "predictions.parquet", "summary.json"]
    # without the cache every subgraph node runs through the LLM: same answers, more layers
    fresh = run(InferConfig(run_dir, root / "pred_fresh", exit="none", cache_neighbours=False))
    assert read_predictions(root / "pred_fresh").column("predicted_label").to_pylist() == want
    assert fresh["llm_layer_evals"] > summary["llm_layer_evals"] and not fresh["cache_neighbours"]


def test_early_exit_runs_fewer_layers_and_matches_cached_replay(trained):
    root, run_dir, graph = trained
    summary = run(InferConfig(run_dir, root / "pred_p1", exit="patience:1", split="all", batch_size=8,
                                 batch_invariant=False))  # packed micro-batches: the same layer counts
    everyone = np.arange(graph.num_nodes)
    logits, _ = _cached_logits(run_dir, everyone)
    replay = decide(parse_exit("patience:1"), logits)
    t = read_predictions(root / "pred_p1").to_pydict()
    assert t["exit_rung"] == replay.exit_rung.tolist()
    assert t["predicted_label"] == [graph.label_names[i] for i in replay.pred.tolist()]
    # each target's own text ran exactly to its exit layer (neighbours come from the cache)
    assert summary["llm_layer_evals"] == int(sum(t["exit_layer"])) < summary["llm_layer_evals_full_depth"]
    assert summary["num_targets"] == NODES and summary["policy"] == "patience:1"


def test_a_run_cut_to_its_depth_never_climbs_past_it(trained, tmp_path):
    """A seed whose depth was chosen on validation (``--depth val``) answers with head depth - 1,
    running each target's text only to that rung's LLM state, whatever the policy."""
    root, run_dir, graph = trained
    cut = tmp_path / "cut"
    shutil.copytree(run_dir, cut)
    summary = json.loads((cut / "summary.json").read_text())
    summary["per_seed"][0]["depth"] = 3
    (cut / "summary.json").write_text(json.dumps(summary))
    test = np.flatnonzero(graph.split == "test")
    logits, _ = _cached_logits(run_dir, test)  # the full ladder, 7 heads
    for policy in ("none", "patience:5"):
        out = run(InferConfig(cut, tmp_path / f"pred_{policy[:4]}", exit=policy))
        t = read_predictions(tmp_path / f"pred_{policy[:4]}").to_pydict()
        assert t["exit_rung"] == [2] * len(test) and t["exit_layer"] == [LAYERS[2]] * len(test)
        assert t["predicted_label"] == [graph.label_names[i] for i in logits[2].argmax(-1).tolist()]
        assert out["llm_layer_evals"] == out["llm_layer_evals_full_depth"] == len(test) * LAYERS[2]


def test_inductive_new_nodes_get_predictions(trained, tmp_path):
    root, run_dir, graph = trained
    train_ids = graph.node_ids[graph.split == "train"][:2].tolist()
    donor = int(np.flatnonzero(graph.split == "test")[0])
    pq.write_table(pa.table({"node_id": pa.array([9_000_001, 9_000_002], pa.int64()),
                             "text": [graph.texts[donor], "Learning rules from examples with decision trees."],
                             "label": [graph.label_names[graph.labels[donor]], None]}), tmp_path / "new.parquet")
    pq.write_table(pa.table({"src": pa.array([9_000_001, 9_000_001, 9_000_002], pa.int64()),
                             "dst": pa.array(train_ids + [9_000_001], pa.int64())}), tmp_path / "new_edges.parquet")
    summary = run(InferConfig(run_dir, tmp_path / "pred", nodes=tmp_path / "new.parquet", edges=tmp_path / "new_edges.parquet"))
    t = read_predictions(tmp_path / "pred").to_pydict()
    assert t["node_id"] == [9_000_001, 9_000_002]
    assert all(name in graph.label_names for name in t["predicted_label"])
    assert all(0 <= r <= 6 for r in t["exit_rung"]) and t["true_label"] == [graph.label_names[graph.labels[donor]], None]
    assert summary["new_nodes"] == 2 and summary["num_labelled"] == 1


def test_default_policy_is_the_runs_choice_on_validation_and_said(trained, tmp_path, cli):
    root, run_dir, graph = trained
    from stage2_train.checkpoint import load_checkpoint

    ck = load_checkpoint(run_dir)
    choice = next(r["exit_policy"] for r in ck.summary["per_seed"] if r["seed"] == ck.seed)
    result = cli("infer", "--checkpoint", run_dir, "--out", tmp_path / "chosen", "--max-targets", 3)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "chosen" / "summary.json").read_text())
    assert summary["policy"] == choice["policy"]
    assert summary["policy_source"].startswith(f"the run's choice for seed {ck.seed}: {choice['policy']} (chosen on 9 validation nodes: "
                                               "cheapest within 1% relative of full-depth validation accuracy; val accuracy ")
    assert f"exit policy {choice['policy']}: the run's choice for seed {ck.seed}" in " ".join(result.stderr.split())
    given = run(InferConfig(run_dir, tmp_path / "given", exit="patience:2", max_targets=3))
    assert given["policy"] == "patience:2" and given["policy_source"] == "given with --exit"
    # a stored policy that is missing or unreadable is damage: refused before the LLM loads, never guessed
    stored = json.loads((run_dir / "summary.json").read_text())
    rebuild = f"retrain it with `pipeline train {ck.config['cache']} --out {{run}} --overwrite`, or pass --exit to choose a policy\n"
    for name, edit, problem in [
        ("missing", lambda r: {k: v for k, v in r.items() if k != "exit_policy"}, f"holds no exit policy for seed {ck.seed}"),
        ("bogus", lambda r: {**r, "exit_policy": {**r["exit_policy"], "policy": "layer:9"}},
         f"the exit policy of seed {ck.seed}, 'layer:9', is not a policy for this run's {len(ck.layers)} rungs"),
        ("unrecorded", lambda r: {**r, "exit_policy": {"policy": "none"}},
         f"the exit policy of seed {ck.seed} lacks its validation record (KeyError: 'rule'; damaged or not written by this pipeline)"),
    ]:
        damaged = tmp_path / name
        shutil.copytree(run_dir, damaged)
        (damaged / "summary.json").write_text(json.dumps({**stored, "per_seed": [edit(r) if r["seed"] == ck.seed else r for r in stored["per_seed"]]}))
        suffix = "" if name == "unrecorded" else " (damaged or not written by this pipeline)"
        assert _refused(cli, tmp_path / f"{name}_pred", "--checkpoint", damaged) == (
            f"Error: {damaged / 'summary.json'}: {problem}{suffix}; {rebuild.format(run=damaged)}")
        assert run(InferConfig(damaged, tmp_path / f"{name}_given", exit="none", max_targets=3))["policy"] == "none"  # --exit still serves


def _refused(cli, out, *args):
    result = cli("infer", "--out", out, *args)
    assert result.exit_code == 2, result.output
    assert not out.exists()  # nothing written
    return result.stderr[result.stderr.index("Error: "):]  # after the model loader's progress bar, if any


def test_refusals_through_the_cli(trained, tmp_path, cli):
    root, run_dir, graph = trained
    out = tmp_path / "out"
    ids = graph.node_ids.tolist()
    assert _refused(cli, out, "--checkpoint", run_dir, "--exit", "soon") == (
        "Error: --exit 'soon': unknown exit policy; use patience:P (P >= 1), confidence:T (0 < T <= 1), "
        "layer:I (0 <= I < rungs) or none\n"
    )
    assert _refused(cli, out, "--checkpoint", run_dir, "--exit", "layer:7") == (
        "Error: --exit layer:7: the checkpoint has 7 rungs (0..6); choose layer:I with I < 7\n"
    )
    nodes, edges = tmp_path / "n.parquet", tmp_path / "e.parquet"
    pq.write_table(pa.table({"node_id": pa.array([ids[3], 777], pa.int64()), "text": ["a", "b"]}), nodes)
    pq.write_table(pa.table({"src": pa.array([777, 777], pa.int64()), "dst": pa.array([ids[0], 123456], pa.int64())}), edges)
    assert _refused(cli, out, "--checkpoint", run_dir, "--nodes", nodes, "--edges", edges) == (
        "Error: invalid new nodes for graph 'graph':\n"
        f"- {nodes}: column 'node_id' has 1 id(s) already in graph 'graph' at rows [0], first: [{ids[3]}]; give new nodes "
        "unused ids (predict known nodes with --node-ids or --split)\n"
        f"- {edges}: column 'dst' has 1 id(s) not in {nodes} or graph 'graph' at rows [1], first: [123456]\n"
    )
    # a checkpoint is tied to its model and layer set
    err = _refused(cli, out, "--checkpoint", run_dir, "--model", "smollm2-135m")
    assert err.startswith(f"Error: --checkpoint {run_dir}: its cache manifest names model 'minilm-l6' (weights sha256 ")
    assert err.endswith("but the model loaded is 'smollm2-135m' with other weights; run without --model (uses 'minilm-l6'), "
                        "or retrain on a cache encoded with `pipeline encode GRAPH --model smollm2-135m`\n")
    other = tmp_path / "other_layers"
    shutil.copytree(run_dir, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "layers": [0, 3, 6]}))
    assert _refused(cli, out, "--checkpoint", other) == (
        f"Error: --checkpoint {other}: its layer set does not match model 'minilm-l6': the rungs read LLM states "
        "[0, 1, 2, 3, 4, 5, 6], the cache manifest holds [0, 3, 6]; run without --model (uses 'minilm-l6'), "
        "or retrain on a cache encoded with `pipeline encode GRAPH --model minilm-l6`\n"
    )


def test_bench_infer_json(trained, tmp_path, cli):
    root, run_dir, graph = trained
    result = cli("bench", "infer", "--checkpoint", run_dir, "--json", tmp_path / "bench.json", "--max-targets", 4)
    assert result.exit_code == 0, result.output
    kind, table = read_bench(tmp_path / "bench.json")
    assert kind == "infer"
    stored = resolve_exit(None, load_checkpoint(run_dir))[0]
    assert list(table)[:3] == ["none", "patience:1", "patience:2"] and len(table) == 5 + (stored not in list(table)[:5])
    assert all(k.startswith("confidence:") for k in list(table)[3:5])
    assert [k for k, row in table.items() if row["infer_default"]] == [stored]  # timed even when not among the two
    for row in table.values():
        assert {"accuracy", "rel_drop", "speedup", "layer_fraction"} <= set(row)
        assert row["num_test"] == 4 and row["num_val"] == 4
        assert 0 < row["layer_fraction"] <= 1
    assert table["none"]["speedup"] == 1.0 and table["none"]["layer_fraction"] == 1.0 and table["none"]["rel_drop"] == 0.0
    assert sum(row["chosen_on_val"] for row in table.values()) == 1
    assert "policy" in result.stdout and "patience:1" in result.stdout


def test_a_model_whose_forward_the_stepping_misses_is_refused(trained, tmp_path, cli, monkeypatch):
    """The self-check at session start (stage1_encode/self_check.py): the first texts' stepped
    states against the model's own forward; here its forward reports state 3 scaled by 1.01."""
    from stage1_encode import models

    real_load = models.load_model

    def load_with_another_forward(spec, device="cpu", dtype=None):
        loaded = real_load(spec, device, dtype)

        def scale_state_3(module, args, out):
            if out.hidden_states is not None:
                out.hidden_states = tuple(h * 1.01 if k == 3 else h for k, h in enumerate(out.hidden_states))
            return out

        loaded.model.register_forward_hook(scale_state_3)
        return loaded

    monkeypatch.setattr(models, "load_model", load_with_another_forward)
    _, run_dir, _ = trained
    err = _refused(cli, tmp_path / "out", "--checkpoint", run_dir)
    assert err.startswith(
        "Error: --model minilm-l6: BertModel (model_type bert) stepped layer by layer deviates from the model's own forward "
        "at LLM state 3 (mean pooling of 8 texts): relative error 9.9"
    )
    assert err.endswith("tolerance 1e-04 for float32 on --backend hf; its states would be wrong, so nothing was written. "
                        "This family's forward does something the stepping does not see; use another model.\n")
