"""Same command, same bits; a node's prediction a function of the model, the graph and the node.

- the evaluation sampler's keyed draws: a target's subgraph is the same alone or in any batch
  (every mode), training draws still change from epoch to epoch, isolated targets and graphs
  without edges give the target alone;
- ``pipeline train`` twice, 3 seeds, the ladder and every baseline: every file byte for byte
  but ``cost.json`` (what was measured);
- ``pipeline infer`` on all test nodes against subsets, a shuffled order, target batches of
  1, 7 and 512, ``--max-targets``, ``--new-only`` and inductive nodes: the same labels and
  confidences bit for bit.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.core.graph import load_graph
from stage2_train.sampling import Sampler, generator, splitmix64

NODES = 45


def _splitmix64_reference(z: int) -> int:
    """splitmix64 on Python integers (unbounded, reduced mod 2**64): the independent reference."""
    m = (1 << 64) - 1
    z = (z + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def test_splitmix64_equals_the_reference_on_wrapping_int64():
    xs = [0, 1, 2, 7, 12345, 2**31, 2**62 + 3, 2**63 - 1, -1, -(2**63), -987654321]
    got = splitmix64(torch.tensor(xs, dtype=torch.long)).tolist()
    assert [g % (1 << 64) for g in got] == [_splitmix64_reference(x % (1 << 64)) for x in xs]


def _own_subgraph(batch, i: int) -> tuple[list[int], list[tuple[int, int]]]:
    """Target ``i``'s subgraph in ``batch``: its global nodes in local order and its edges as global pairs."""
    local = torch.nonzero(batch.batch == batch.target_graph[i]).flatten()
    nodes = batch.nodes[local]
    inside = torch.isin(batch.edge_index[0], local)
    edges = [(int(batch.nodes[a]), int(batch.nodes[b])) for a, b in batch.edge_index[:, inside].t().tolist()]
    return nodes.tolist(), edges


SAMPLER_SETTINGS = [
    ("ego", {"hops": 2, "fanout": 5}),
    ("ego", {"hops": 1, "fanout": 2}),
    ("ego", {"hops": 1}),
    ("rwr", {"num_walks": 4, "walk_length": 6}),
]


@pytest.mark.parametrize("mode,kw", SAMPLER_SETTINGS, ids=[f"{m}-{'-'.join(f'{k}{v}' for k, v in kw.items())}" for m, kw in SAMPLER_SETTINGS])
def test_evaluation_draw_is_the_same_alone_and_in_any_batch(mode, kw):
    cora = load_graph("cora")
    sampler = Sampler(cora.edge_index, cora.num_nodes, mode=mode, **kw)
    targets = np.arange(0, cora.num_nodes, 5)
    big = sampler.sample(targets)
    shuffled_order = np.random.default_rng(0).permutation(len(targets))
    shuffled = sampler.sample(targets[shuffled_order])
    where = {int(t): k for k, t in enumerate(targets[shuffled_order])}
    for i in (0, 1, 17, 300, len(targets) - 1):
        alone = sampler.sample(targets[i : i + 1])
        assert _own_subgraph(alone, 0) == _own_subgraph(big, i) == _own_subgraph(shuffled, where[int(targets[i])])


def test_training_draws_change_from_call_to_call_and_replay_from_the_seed():
    cora = load_graph("cora")
    sampler = Sampler(cora.edge_index, cora.num_nodes, mode="ego", hops=2, fanout=5)
    hubs = np.argsort(-np.bincount(cora.edge_index[0], minlength=cora.num_nodes))[:20]
    gen = generator(0)
    first, second = sampler.sample(hubs, gen).nodes, sampler.sample(hubs, gen).nodes
    assert not torch.equal(first, second)  # a new draw each epoch
    assert torch.equal(sampler.sample(hubs, generator(0)).nodes, first)  # the same seed replays it


def test_isolated_targets_and_edgeless_graphs_give_the_target_alone():
    citeseer = load_graph("citeseer")
    isolated = np.nonzero(np.bincount(citeseer.edge_index[0], minlength=citeseer.num_nodes) == 0)[0]
    assert len(isolated) == 86
    for mode, kw in SAMPLER_SETTINGS:
        sampler = Sampler(citeseer.edge_index, citeseer.num_nodes, mode=mode, **kw)
        for gen in (None, generator(1)):
            sub = sampler.sample(isolated, gen)
            assert sub.nodes.tolist() == isolated.tolist() and sub.edge_index.shape == (2, 0)
            assert sub.targets.tolist() == list(range(len(isolated)))
    none = Sampler(np.zeros((2, 0), dtype=np.int64), 5, mode="ego", hops=2, fanout=5).sample(np.array([4, 0]))
    assert none.nodes.tolist() == [4, 0] and none.edge_index.shape == (2, 0) and none.batch.tolist() == [0, 1]


def _files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("arch", ["ladder", "mlp", "gcn", "sage"])
def test_train_twice_gives_the_same_bytes(arch, cora_cache, tmp_path):
    from stage2_train.config import TrainConfig
    from stage2_train.run import run as train

    _, cache = cora_cache(NODES, max_length=32, block_size=16)
    out = tmp_path / "run"
    runs = []
    for _ in range(2):
        train(TrainConfig(cache=cache, out=out, arch=arch, seeds=(0, 1, 2), epochs=4, batch_size=8, hidden_channels=16,
                          lr=3e-3, overwrite=True))  # the same command twice
        runs.append(_files(out))
    first, second = runs
    assert sorted(first) == sorted(second)
    assert "cost.json" in first and "seed_2/model.safetensors" in first
    differ = [name for name in first if name != "cost.json" and first[name] != second[name]]
    assert differ == []
    cost = json.loads(first["cost.json"])
    assert {"cost", "epoch_s_mean", "per_seed"} <= set(cost) and [r["seed"] for r in cost["per_seed"]] == [0, 1, 2]


@pytest.fixture(scope="module")
def ladder_run(tmp_path_factory, cora_cache):
    """A 45-node Cora ladder (2-hop, fanout-2 ego graphs, so draws matter) on a MiniLM cache."""
    from stage2_train.config import TrainConfig
    from stage2_train.run import run as train

    root = tmp_path_factory.mktemp("invariant")
    graph_dir, cache = cora_cache(NODES, max_length=32, block_size=16)
    train(TrainConfig(cache=cache, out=root / "run", epochs=3, batch_size=16, hidden_channels=32, lr=3e-3, hops=2, fanout=2,
                      depth="full"))
    return root, root / "run", graph_dir


def _predict(session, targets: np.ndarray, target_batch: int):
    from stage2_train.exit_policies import parse_exit
    from stage3_infer.run import predict

    session.sample_batch = target_batch
    result = predict(session, targets, parse_exit("patience:1"), show_progress=False)
    t = result.tracker
    return t.pred.clone(), t.confidence.clone(), t.exit_rung.clone()


def test_a_prediction_is_the_same_in_any_batch_subset_or_order(ladder_run):
    from stage3_infer.config import InferConfig
    from stage3_infer.run import open_session

    root, run_dir, _ = ladder_run
    session = open_session(InferConfig(run_dir, out=root / "unused", device="cpu"))
    targets = np.arange(session.g.graph.num_nodes)
    reference = _predict(session, targets, 512)
    rng = np.random.default_rng(0)
    for target_batch in (1, 7, 512):
        order = rng.permutation(len(targets))
        for pick in (order, order[:7], order[-1:]):
            got = _predict(session, targets[pick], target_batch)
            for a, b in zip(got, reference):
                assert torch.equal(a, b[pick])  # labels, confidences, exit rungs: bit for bit


def _table(path) -> dict:
    t = pq.read_table(path)
    return {row["node_id"]: (row["predicted_label"], row["confidence"], row["exit_layer"]) for row in t.to_pylist()}


def test_cli_predictions_are_the_same_for_subsets_new_only_and_new_nodes(ladder_run, cora_cache, cli, tmp_path):
    root, run_dir, graph_dir = ladder_run
    _, earlier_cache = cora_cache(NODES - 5, max_length=32, block_size=16)
    graph = load_graph(graph_dir)
    ok = lambda *a: cli(*a).exit_code == 0  # noqa: E731
    assert ok("infer", "--checkpoint", run_dir, "--out", tmp_path / "all", "--split", "all")
    everything = _table(tmp_path / "all" / "predictions.parquet")
    assert ok("infer", "--checkpoint", run_dir, "--out", tmp_path / "few", "--split", "all", "--max-targets", "5")
    few = _table(tmp_path / "few" / "predictions.parquet")
    assert len(few) == 5 and few == {k: everything[k] for k in few}
    ids = tmp_path / "ids.txt"
    picked = [int(i) for i in graph.node_ids[::-6]]
    ids.write_text("\n".join(map(str, picked)) + "\n")
    assert ok("infer", "--checkpoint", run_dir, "--out", tmp_path / "ids", "--node-ids", ids)
    assert _table(tmp_path / "ids" / "predictions.parquet") == {k: everything[k] for k in picked}

    # inductive: two new papers linked to known nodes (one also to the other) and one with no edge at all
    known = [int(i) for i in graph.node_ids[:3]]
    new = pa.table({"node_id": pa.array([900001, 900002, 900003], pa.int64()),
                    "text": [graph.texts[0] + " revisited", graph.texts[1] + " again", "A paper nobody cites yet."]})
    edges = pa.table({"src": pa.array([900001, 900002, 900002], pa.int64()), "dst": pa.array([known[0], known[1], 900001], pa.int64())})
    pq.write_table(new, tmp_path / "new.parquet")
    pq.write_table(edges, tmp_path / "new_edges.parquet")
    assert ok("infer", "--checkpoint", run_dir, "--out", tmp_path / "new", "--nodes", tmp_path / "new.parquet", "--edges", tmp_path / "new_edges.parquet")
    together = _table(tmp_path / "new" / "predictions.parquet")
    assert sorted(together) == [900001, 900002, 900003]
    assert ok("infer", "--checkpoint", run_dir, "--out", tmp_path / "new1", "--nodes", tmp_path / "new.parquet",
              "--edges", tmp_path / "new_edges.parquet", "--max-targets", "1")
    assert _table(tmp_path / "new1" / "predictions.parquet") == {900001: together[900001]}

    # --new-only against the cache of an earlier, smaller version (the first 40 of these 45 nodes)
    # predicts the 5 it lacked, as they are predicted among all
    assert ok("infer", "--checkpoint", run_dir, "--out", tmp_path / "newonly", "--new-only", earlier_cache)
    newonly = _table(tmp_path / "newonly" / "predictions.parquet")
    assert len(newonly) == 5 and newonly == {k: everything[k] for k in newonly}


def test_packing_flags_need_no_batch_invariant(ladder_run, cli, tmp_path):
    _, run_dir, _ = ladder_run
    result = cli("infer", "--checkpoint", run_dir, "--out", tmp_path / "p", "--batch-size", "4")
    assert result.exit_code == 2
    assert ("--batch-size: packs LLM micro-batches, which only --no-batch-invariant does (by default every text runs alone); "
            "add --no-batch-invariant or drop --batch-size") in result.output
    assert not (tmp_path / "p").exists()
    assert cli("infer", "--checkpoint", run_dir, "--out", tmp_path / "p", "--batch-size", "4", "--no-batch-invariant").exit_code == 0


def test_deterministic_flag_gives_the_same_weights_on_cpu_and_restores_torch(cora_cache, tmp_path):
    from stage2_train.config import TrainConfig
    from stage2_train.run import run as train

    _, cache = cora_cache(NODES, max_length=32, block_size=16)
    weights = []
    for name, deterministic in (("plain", False), ("det", True)):
        train(TrainConfig(cache=cache, out=tmp_path / name, seeds=(0,), epochs=3, batch_size=8, hidden_channels=16, lr=3e-3,
                          deterministic=deterministic))
        weights.append((tmp_path / name / "seed_0" / "model.safetensors").read_bytes())
        assert not torch.are_deterministic_algorithms_enabled()  # the process's setting is given back
    assert weights[0] == weights[1]  # CPU kernels are deterministic already
    assert json.loads((tmp_path / "det" / "train_config.json").read_text())["deterministic"] is True


def test_results_scripts_read_the_measured_costs_from_cost_json(ladder_run):
    """summary.json holds no measured cost (it is the same on every run); the results scripts
    read the cost ledger from cost.json, as `pipeline report` does."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import results_cost

    _, run, _ = ladder_run
    assert "cost" not in json.loads((run / "summary.json").read_text())
    cost = json.loads((run / "cost.json").read_text())["cost"]
    row = results_cost.row("cora", "G-Ladder", str(run))
    assert (row["trainable_params"], row["total_s_per_seed"]) == (cost["trainable_params"], round(cost["total_s"]))
    summary = json.loads((run / "summary.json").read_text())  # the test column is what infer answers
    assert summary["exit_test_acc_mean"] is not None
    assert row["test_mean"] == round(100 * summary["exit_test_acc_mean"], 2)
    assert row["peak_of"] == ("encode and training" if cost.get("pipeline_peak_memory_bytes") is not None else "training")
