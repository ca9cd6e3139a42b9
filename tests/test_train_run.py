"""``pipeline train`` end to end on a real cache: 60 Cora nodes encoded by stage 1 with MiniLM.

Covers: a ladder fits its training nodes; checkpoint save/load gives identical predictions;
same seed -> same metrics; the refusals (incomplete cache, cache of another graph, missing
rungs), each with the command that fixes it; ladder and baselines write the same files and
summary keys; ``--no-cache`` gives the cached first-batch loss for the same weights.
"""

from __future__ import annotations

import json

import pytest
import torch

from cora_slice import encode_slice, write_cora_slice
from pipeline.core.errors import InputError
from pipeline.core.graph import load_graph
from stage2_train.checkpoint import load_checkpoint, read_metrics
from stage2_train.config import TrainConfig
from stage2_train.run import run

NODES = 60


ENCODE = dict(max_length=64, block_size=16)


@pytest.fixture(scope="module")
def small(tmp_path_factory, cora_cache):
    """(a folder for this module's runs, the shared 60-node cache)."""
    return tmp_path_factory.mktemp("train"), cora_cache(NODES, **ENCODE)[1]


def _cfg(small, name, **kw):
    root, cache = small
    # kept tiny (3 rungs, K = 32, few epochs): the suite runs on a shared 2-core machine
    base = dict(cache=cache, out=root / name, epochs=3, patience=3, batch_size=16, hidden_channels=32, rungs=(0, 3, 6),
                num_threads=1)
    if kw.get("arch", "ladder") != "ladder":
        base.pop("rungs")
    return TrainConfig(**{**base, **kw})


def test_ladder_fits_a_small_real_subgraph(small):
    # full batch (36 training nodes), no regularisation, the same subgraphs every epoch: the ladder must memorise them
    s = run(_cfg(small, "fit", rungs=None, epochs=40, patience=40, batch_size=64, dropout=0.0, lr=1e-2, weight_decay=0.0, fanout=0))
    per = s["per_seed"][0]
    assert per["train_acc"] >= 0.97
    assert per["split_sizes"] == {"train": 36, "val": 12, "test": 12}  # the split column is the default
    assert s["layers"] == [0, 1, 2, 3, 4, 5, 6] and len(per["gates"]) == 7


def test_checkpoint_roundtrip_identical_predictions_and_determinism(small):
    from stage2_train.data import CachedFeatures, open_train_data, resolve_split
    from stage2_train.loop import evaluate, make_eval_set
    from stage2_train.sampling import Sampler

    root = small[0]
    a = run(_cfg(small, "det_a", seeds=(0, 1)))
    b = run(_cfg(small, "det_b", seeds=(0, 1)))
    assert read_metrics(root / "det_a") == read_metrics(root / "det_b")  # wall times live in cost.json
    for k in ("test_acc_mean", "val_acc_mean", "heads", "gates_mean", "default_seed"):
        assert a[k] == b[k]

    ck = load_checkpoint(root / "det_a", seed=1)
    depth = a["per_seed"][1]["depth"]  # the rungs seed 1 keeps (--depth val, the default)
    assert ck.seed == 1 and ck.layers == [0, 3, 6][:depth] and ck.graph_source == json.loads((root / "det_a" / "manifest.json").read_text())["graph_source"]
    data = open_train_data(ck.cache_path, tuple(ck.layers), None, "ladder")
    feats = CachedFeatures(data)
    split = resolve_split(data.graph, None, 1)
    es = make_eval_set(Sampler(data.graph.edge_index, data.graph.num_nodes, **ck.sampler), split["val"], data.graph.labels, 512)
    assert evaluate(ck.model, feats, es, "cpu") == a["per_seed"][1]["val_acc_heads"][:depth]
    # a second load gives bit-identical logits
    sub = es.subs[0]
    again = load_checkpoint(root / "det_b", seed=1).model
    with torch.no_grad():
        assert torch.equal(ck.model(feats(sub.nodes), sub), again(feats(sub.nodes), sub))


def test_rung_activation_and_norm_are_saved_and_rebuilt(small):
    from torch import nn

    root = small[0]
    run(_cfg(small, "elu", rung_activation="elu", rung_norm="none", rungs=(0, 6), depth="full"))
    config = json.loads((root / "elu" / "checkpoint.json").read_text())
    assert (config["rung_activation"], config["rung_norm"]) == ("elu", "none")
    assert (config["model"]["rung_activation"], config["model"]["rung_norm"]) == ("elu", "none")
    model = load_checkpoint(root / "elu").model
    kinds = {type(m) for m in model.gnns.modules()}  # the rungs; the projections keep LayerNorm and ReLU
    assert nn.ELU in kinds and nn.ReLU not in kinds and nn.LayerNorm not in kinds
    assert [type(m) for m in model.proj[0]] == [nn.Linear, nn.LayerNorm, nn.ReLU, nn.Linear]
    with pytest.raises(InputError, match=r"--rung-norm: .* has rung_norm 'none', this run 'layer'"):
        run(_cfg(small, "elu_warm", rungs=(0, 6), depth="full", init=root / "elu"))
    # a checkpoint of another format version is refused, naming the file, the version and what to run
    path = root / "elu" / "checkpoint.json"
    recorded = json.loads(path.read_text())
    path.write_text(json.dumps({**recorded, "format_version": 2}))
    with pytest.raises(InputError) as err:
        load_checkpoint(root / "elu")
    assert err.value.exit_code == 2 and err.value.message == (
        f"{path}: format version 2, this version of the pipeline reads 1; retrain it with "
        f"`pipeline train {recorded['cache']} --out {root / 'elu'} --overwrite`")


def test_baselines_and_ladder_write_the_same_format(small):
    root = small[0]
    summaries = {arch: run(_cfg(small, f"fmt_{arch}", arch=arch, epochs=2)) for arch in ("ladder", "mlp", "gcn", "sage")}
    keys = {arch: sorted(s) for arch, s in summaries.items()}
    assert keys["mlp"] == keys["ladder"] == keys["gcn"] == keys["sage"]
    for arch, s in summaries.items():
        files = sorted(str(p.relative_to(root / f"fmt_{arch}")) for p in (root / f"fmt_{arch}").rglob("*") if p.is_file())
        assert files == [".pipeline-artifact.json", "checkpoint.json", "cost.json", "manifest.json", "metrics.jsonl", "seed_0/model.safetensors", "summary.json", "train_config.json"]
        assert sorted(s["per_seed"][0]) == sorted(summaries["ladder"]["per_seed"][0])
    assert summaries["gcn"]["layers"] == [6] and summaries["mlp"]["gates_mean"] == []
    assert load_checkpoint(root / "fmt_sage").config["model"]["arch"] == "sage"


def test_refusals_name_the_fixing_command(small, tmp_path):
    root, cache = small
    with pytest.raises(InputError) as err:  # a state the LLM does not have: no re-encode can give it
        run(_cfg(small, "r1", rungs=(0, 9)))
    assert err.value.message == f"--rungs: the LLM of cache {cache} has states 0..6 (0 = embeddings), not [9]; the cache holds [0, 1, 2, 3, 4, 5, 6]"
    half = tmp_path / "half.zarr"
    graph = load_graph(json.loads((cache / "manifest.json").read_text())["graph_source"])
    encode_slice(graph.source, half, num_shards=2, shard_id=0, **ENCODE)
    with pytest.raises(InputError, match=r"is incomplete: .*missing shard\(s\) 1 of 2: `pipeline encode .* --shard-id 1`"):
        run(_cfg(small, "r2", cache=half))
    # the cache's graph changed after encoding: refused with the re-encode command
    other = write_cora_slice(tmp_path / "other", NODES)
    other_cache = tmp_path / "other.zarr"
    encode_slice(other.source, other_cache, **ENCODE, layers="0,3,6")
    with pytest.raises(InputError) as err:  # a state the LLM has but the cache does not: re-encode with the cache's settings
        run(_cfg(small, "r1", cache=other_cache, rungs=(0, 2, 6)))
    assert err.value.message == (
        f"--rungs: cache {other_cache} has LLM states [0, 3, 6], not [2]; choose among those, or re-encode with "
        f"`pipeline encode {other.source} --out NEW_CACHE --model minilm-l6 --layers 0,2,3,6 --max-length 64 --pooling mean "
        "--dtype float32 --storage-dtype float16 --block-size 16 --batch-tokens 4096`")
    write_cora_slice(tmp_path / "other2", NODES, texts_suffix=" (edited)")
    import shutil

    shutil.rmtree(tmp_path / "other")
    shutil.move(tmp_path / "other2", tmp_path / "other")
    with pytest.raises(InputError, match=r"^graph '.*other' \(fingerprint \w{12}\) changed since cache .* was built \(now \w{12}\); "
                       r"re-encode with `pipeline encode .*other --out NEW_DIR`$"):
        run(_cfg(small, "r3", cache=other_cache))
    assert not (root / "r1").exists() and not (root / "r2").exists() and not (root / "r3").exists()
    with pytest.raises(InputError, match=r"missing summary.json \(not a finished training run\); create it with `pipeline train CACHE_DIR --out"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "checkpoint.json").write_text("{}")
        (tmp_path / "empty" / "manifest.json").write_text("{}")
        load_checkpoint(tmp_path / "empty")


def test_no_cache_first_batch_loss_equals_cached(small):
    from stage2_train.checkpoint import build_model
    from stage2_train.data import CachedFeatures, LiveFeatures, open_train_data, resolve_split
    from stage2_train.loop import seed_everything, time_epoch
    from stage2_train.run import model_spec
    from stage2_train.sampling import Sampler

    cfg = _cfg(small, "nc", no_cache=True, rungs=None)
    data = open_train_data(cfg.cache, None, None, "ladder")
    split = resolve_split(data.graph, None, 0)
    sampler = Sampler(data.graph.edge_index, data.graph.num_nodes, mode="ego")
    spec = model_spec(cfg, data.reader.hidden_size, data.graph.num_classes, len(data.layers))
    losses = []
    for feats in (CachedFeatures(data), LiveFeatures(data)):
        seed_everything(0)
        losses.append(time_epoch(build_model(spec), feats, sampler, split["train"], data.graph.labels, cfg, 0, max_batches=1)["losses"][0])
    assert losses[0] == pytest.approx(losses[1], abs=1e-4)


def test_cli_end_to_end_exact_files(small, cli):
    root, cache = small
    out = root / "cli_run"
    res = cli("train", cache, "--out", out, "--epochs", "2", "--seeds", "0,1", "--hidden-channels", "16", "--sampler", "rwr",
              "--rungs", "0,6", "--num-threads", "1")
    assert res.exit_code == 0, res.output
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [".pipeline-artifact.json", "checkpoint.json", "cost.json", "manifest.json", "metrics.jsonl", "seed_0/model.safetensors", "seed_1/model.safetensors", "summary.json", "train_config.json"]
    s = json.loads((out / "summary.json").read_text())
    assert s["seeds"] == [0, 1] and len(read_metrics(out)) == sum(p["epochs_run"] for p in s["per_seed"])
    assert [h["layer"] for h in s["heads"]] == [0, 6]
    assert json.loads((out / "checkpoint.json").read_text())["sampler"] == "rwr"
    res = cli("train", cache, "--out", out, "--epochs", "0", "--gnn", "gin")
    assert res.exit_code == 2
    text = " ".join(res.output.replace("│", " ").split())  # undo the error panel's line wrapping
    for part in ("--epochs 0: must be > 0", "--gnn gin: choose one of sage, gcn, gat"):
        assert part in text
    res = cli("train", cache, "--out", out, "--epochs", "2")
    assert res.exit_code == 2 and res.stderr == (
        f"Error: --out {out}: holds an earlier run; pass --overwrite to replace it, or choose another --out (nothing was changed)\n")


def test_standardize_statistics_come_from_training_nodes_only(small):
    import numpy as np
    from safetensors.torch import load_file

    from stage2_train.data import CachedFeatures, open_train_data, resolve_split
    from stage2_train.loop import evaluate, make_eval_set
    from stage2_train.sampling import Sampler
    from stage2_train.standardize import training_stats

    root, cache = small
    s = run(_cfg(small, "std", standardize=True, lr=1e-2))
    config = json.loads((root / "std" / "checkpoint.json").read_text())
    assert config["standardize"] is True and config["model"]["standardize"] is True
    data = open_train_data(cache, (0, 3, 6), None, "ladder")
    split = resolve_split(data.graph, None, 0)
    rows = np.asarray(data.reader.read_all(rungs=data.positions), dtype=np.float64)  # (N, S, H)
    saved = load_file(str(root / "std" / "seed_0" / "model.safetensors"))
    assert np.allclose(saved["scaler.mean"].numpy(), rows[split["train"]].mean(0), atol=1e-5)
    assert np.allclose(saved["scaler.std"].numpy(), rows[split["train"]].std(0), atol=1e-5)
    # validation and test rows would move them: the statistics over every labelled row differ
    everyone = np.concatenate([split["train"], split["val"], split["test"]])
    assert not np.allclose(saved["scaler.mean"].numpy(), rows[everyone].mean(0), atol=1e-4)
    # and changing those rows leaves them as they are
    feats = CachedFeatures(data)
    others = torch.as_tensor(np.concatenate([split["val"], split["test"]]))
    shifted = lambda nodes: feats(nodes) + 1e3 * torch.isin(nodes, others)[:, None, None]  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(training_stats(feats, split["train"]), training_stats(shifted, split["train"])))
    # the loaded checkpoint standardises as training did: the same validation accuracy per head
    ck = load_checkpoint(root / "std")
    depth = s["per_seed"][0]["depth"]  # the rungs seed 0 keeps, with their statistics
    assert torch.equal(ck.model.scaler.mean, saved["scaler.mean"][:depth])
    es = make_eval_set(Sampler(data.graph.edge_index, data.graph.num_nodes, **ck.sampler), split["val"], data.graph.labels, 512)
    assert evaluate(ck.model, feats, es, "cpu") == s["per_seed"][0]["val_acc_heads"][:depth]
    assert "scaler.mean" not in load_file(str(_trained_plain(small) / "seed_0" / "model.safetensors"))


def _trained_plain(small):
    root = small[0]
    if not (root / "plain").exists():
        run(_cfg(small, "plain", lr=1e-2))
    return root / "plain"


def test_last_head_loss_equals_multi_exit_with_weights_0_to_1(small):
    """Plain ENGINE (--loss last-head) is ENGINE-Early's multi-exit loss with rung weights 0,...,0,1."""
    from safetensors.torch import load_file

    root = small[0]
    kw = dict(lr=1e-2, epochs=4, patience=4)
    engine = run(_cfg(small, "engine", loss="last-head", **kw))
    weighted = run(_cfg(small, "weighted_001", rung_weights=(0.0, 0.0, 1.0), rung_grad="joint", depth="full", **kw))
    la, lb = read_metrics(root / "engine"), read_metrics(root / "weighted_001")
    assert [m["val_acc"] for m in la] == [m["val_acc"] for m in lb] and len(la) == 4
    assert [m["loss"] for m in la] == pytest.approx([m["loss"] for m in lb], rel=1e-5)
    wa = load_file(str(root / "engine" / "seed_0" / "model.safetensors"))
    wb = load_file(str(root / "weighted_001" / "seed_0" / "model.safetensors"))
    feeding_last_head = [k for k in wa if not k.startswith(("heads.0.", "heads.1."))]  # weight 0: never trained
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in feeding_last_head)
    assert engine["per_seed"][0]["test_acc"] == weighted["per_seed"][0]["test_acc"]
    # all weights 1 (the multi-exit loss) trains the same network differently
    multi = load_file(str(_trained_plain(small) / "seed_0" / "model.safetensors"))
    assert not torch.allclose(multi["proj.0.0.weight"], wa["proj.0.0.weight"], atol=1e-5)
    assert json.loads((root / "engine" / "checkpoint.json").read_text())["loss"] == "last-head"


def test_exit_policy_is_chosen_on_validation_and_stored(small):
    import numpy as np

    from stage2_train.data import CachedFeatures, open_train_data, resolve_split
    from stage2_train.sampling import Sampler
    from stage2_train.exit_policies import CANDIDATES, choose_policy, replay_counts

    root, cache = small
    s = json.loads((_trained_plain(small) / "summary.json").read_text())
    choice = s["per_seed"][0]["exit_policy"]
    assert s["exit_policy"] == choice and choice["policy"] in CANDIDATES and choice["num_val"] == 12
    # replayed from the checkpoint's validation logits: the same choice
    ck = load_checkpoint(root / "plain")
    data = open_train_data(cache, (0, 3, 6), None, "ladder")
    val = resolve_split(data.graph, None, 0)["val"]
    sub = Sampler(data.graph.edge_index, data.graph.num_nodes, **ck.sampler).sample(val)
    with torch.no_grad():
        logits = ck.model(CachedFeatures(data)(sub.nodes), sub)  # (S, M, C)
    layers, last = ck.layers, ck.layers[-1]  # the rungs the seed keeps (--depth val, the default)
    assert layers == [0, 3, 6][: s["per_seed"][0]["depth"]] and logits.shape[0] == len(layers)
    counts = replay_counts(logits, torch.as_tensor(data.graph.labels[val]), layers)
    assert choose_policy(counts, last) == {k: v for k, v in choice.items() if k != "test_acc"}
    # its accuracy on the test nodes (what infer answers by default) is recorded, never used to choose
    test = resolve_split(data.graph, None, 0)["test"]
    sub = Sampler(data.graph.edge_index, data.graph.num_nodes, **ck.sampler).sample(test)
    with torch.no_grad():
        correct, total, _ = replay_counts(ck.model(CachedFeatures(data)(sub.nodes), sub), torch.as_tensor(data.graph.labels[test]),
                                          layers, (choice["policy"],))[choice["policy"]]
    assert choice["test_acc"] == correct / total and s["exit_test_acc_mean"] == correct / total
    # the rule: within 1% relative of full depth, and no candidate within it runs fewer layers
    base = counts["none"][0] / counts["none"][1]
    assert (base - choice["val_acc"]) / base <= 0.01 + 1e-12 and choice["full_depth_val_acc"] == base
    within = [k for k, (c, n, _) in counts.items() if (base - c / n) / base <= 0.01 + 1e-12]
    def fraction(k):  # of the LLM layers up to the answering rung's state (a rung at state 0 runs none: 1.0)
        return counts[k][2] / (counts[k][1] * last) if last else 1.0

    assert choice["layer_fraction"] == min(fraction(k) for k in within)
    assert np.isclose(choice["layer_fraction"], fraction(choice["policy"]))
    # baselines have no exit rungs: nothing stored
    assert run(_cfg(small, "mlp_exit", arch="mlp", epochs=1))["exit_policy"] is None


def test_a_graph_without_splits_trains_on_a_seeded_random_split(cli, write_graph, tmp_path):
    ids = list(range(20))
    graph = write_graph({"node_id": ids, "text": [f"paper {i} about topic {i % 2}" for i in ids], "label": [str(i % 2) for i in ids]},
                        {"src": ids[:-1], "dst": ids[1:]}, name="bare")
    cache, run_dir = tmp_path / "bare.zarr", tmp_path / "run"
    assert cli("encode", graph, "--out", cache, "--model", "minilm-l6", "--max-length", "8", "--device", "cpu").exit_code == 0
    result = cli("train", cache, "--out", run_dir, "--epochs", "2", "--hidden-channels", "16", "--num-threads", "1")
    assert result.exit_code == 0, result.output
    assert "split: random:0.6,0.2,0.2 (the default for graph 'bare'; --split chooses another)\n" in result.stderr
    explicit = cli("train", cache, "--out", tmp_path / "explicit", "--epochs", "2", "--hidden-channels", "16", "--num-threads", "1",
                   "--split", "random:0.6,0.2,0.2")
    assert explicit.exit_code == 0 and "split: " not in explicit.stderr
    # the same split, so the same training: identical weights
    assert (run_dir / "seed_0" / "model.safetensors").read_bytes() == (tmp_path / "explicit" / "seed_0" / "model.safetensors").read_bytes()


def test_the_log_says_when_no_test_node_is_labelled(tmp_path):
    from stage2_train.config import TrainConfig
    from stage2_train.run import summary_line, format_test_acc

    config = TrainConfig(tmp_path, tmp_path / "run", seeds=(0, 1))
    summary = {"test_acc_mean": None, "test_acc_std": None, "val_acc_mean": 0.6875, "exit_test_acc_mean": None}
    assert summary_line(config, summary) == (f"ladder: test n/a (no labelled test node), val 68.75 over seeds [0, 1] -> {tmp_path / 'run'}")
    assert (format_test_acc(float("nan"), ".4f"), format_test_acc(0.5, ".4f")) == ("n/a (no labelled test node)", "0.5000")
