"""``--rung-grad own`` and ``--depth val``: how each rung is trained and which head answers.

Covers: with ``own`` a head's loss reaches its own rung only (the forward is unchanged);
the answering head is the best on validation, ties to the shallower; a run trained with
``--depth val`` reports that head, and its checkpoint loads as a ladder cut to that depth whose
heads are the full ladder's first ones; a depth that is no rung count is refused as damage;
the flags' refusals.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from pipeline.core.errors import InputError
from stage2_train.checkpoint import build_model, load_checkpoint
from stage2_train.config import TrainConfig
from stage2_train.ladder import GLadder
from stage2_train.loop import answer_head
from stage2_train.sampling import Sampler

NODES = 45


def _ladder(rung_grad: str, standardize: bool = False) -> GLadder:
    torch.manual_seed(0)
    return GLadder(8, 16, 3, num_rungs=3, rung_grad=rung_grad, dropout=0.0, standardize=standardize)


def _batch():
    edges = np.array([[0, 1, 1, 2, 3, 4], [1, 0, 2, 1, 4, 3]])
    sub = Sampler(edges, 5, mode="ego").sample(np.array([0, 2, 3]))
    states = torch.randn(5, 3, 8, generator=torch.Generator().manual_seed(1))[sub.nodes]  # (n, S, H)
    return states, sub


def test_rung_grad_own_trains_each_rung_by_its_own_head_only():
    states, sub = _batch()
    untouched, outputs = {}, {}
    for mode in ("joint", "own"):
        model = _ladder(mode)
        outputs[mode] = model(states, sub)  # (S, B, C)
        outputs[mode][2].sum().backward()  # the last head's loss alone
        untouched[mode] = sorted({n.split(".")[0] + "." + n.split(".")[1] for n, p in model.named_parameters()
                                  if n != "gate_logits" and not n.startswith("gnns.2.norms.")  # the last rung ends linear: unused
                                  and (p.grad is None or not p.grad.any())})
    assert torch.equal(outputs["joint"], outputs["own"])  # the same function forward: only the gradient's path differs
    assert untouched["joint"] == ["heads.0", "heads.1"]
    assert untouched["own"] == ["gnns.0", "gnns.1", "heads.0", "heads.1", "proj.0", "proj.1"]


def test_answer_head_is_the_best_on_validation_ties_to_the_shallower():
    assert answer_head([0.5, 0.8, 0.8, 0.7], "val") == 1
    assert answer_head([0.5, 0.8, 0.8, 0.7], "full") == 3
    assert answer_head([0.9], "val") == 0


def test_keep_rungs_gives_the_first_heads_of_the_full_ladder():
    states, sub = _batch()
    model = _ladder("own", standardize=True)
    model.scaler.set_stats(torch.randn(3, 8), torch.rand(3, 8) + 0.5)
    model.eval()
    with torch.no_grad():
        full = model(states, sub)
        model.keep_rungs(2)
        cut = model(states[:, :2], sub)
    assert model.num_rungs == 2 and tuple(model.scaler.mean.shape) == (2, 8) and len(model.gates()) == 2
    assert torch.equal(cut, full[:2])
    with pytest.raises(ValueError, match="depth 3: the ladder has 2 rungs"):
        model.keep_rungs(3)


@pytest.fixture(scope="module")
def depth_run(tmp_path_factory, cora_cache):
    from stage2_train.run import run

    root = tmp_path_factory.mktemp("depth")
    _, cache = cora_cache(NODES, max_length=32, block_size=16)
    summary = run(TrainConfig(cache=cache, out=root / "run", epochs=4, patience=4, batch_size=16, hidden_channels=32,
                              lr=3e-3, num_threads=1))  # the defaults: --rung-grad own --depth val
    return root, cache, summary


def test_depth_val_answers_with_the_best_validation_head_and_loads_cut_there(depth_run):
    from stage2_train.data import CachedFeatures, open_train_data

    root, cache, s = depth_run
    per = s["per_seed"][0]
    depth = answer_head(per["val_acc_heads"], "val") + 1
    assert per["depth"] == depth
    assert (per["val_acc"], per["test_acc"]) == (per["val_acc_heads"][depth - 1], per["test_acc_heads"][depth - 1])
    assert s["test_acc_mean"] == per["test_acc"]
    config = json.loads((root / "run" / "checkpoint.json").read_text())
    assert config["rung_grad"] == "own" and config["depth"] == "val" and config["model"]["rung_grad"] == "own"
    metrics = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(m["val_acc"] == max(m["val_acc_heads"]) for m in metrics)  # early stopping watched the best head
    # the checkpoint is the ladder cut to that depth: the full ladder's first heads, nothing above
    ck = load_checkpoint(root / "run")
    assert ck.layers == s["layers"][:depth] and ck.model.num_rungs == depth
    data = open_train_data(cache, tuple(s["layers"]), None, "ladder")
    full = build_model(config["model"])
    from safetensors.torch import load_file

    full.load_state_dict(load_file(str(root / "run" / "seed_0" / "model.safetensors")))
    full.eval()
    sub = Sampler(data.graph.edge_index, data.graph.num_nodes, **ck.sampler).sample(np.arange(NODES))
    x = CachedFeatures(data)(sub.nodes)  # (n, S, H)
    with torch.no_grad():
        assert torch.equal(ck.model(x[:, :depth], sub), full(x, sub)[:depth])


def test_a_depth_that_is_no_rung_count_is_refused(depth_run, tmp_path):
    root, cache, _ = depth_run
    bad = tmp_path / "bad"
    shutil.copytree(root / "run", bad)
    summary = json.loads((bad / "summary.json").read_text())
    cache_path = json.loads((bad / "checkpoint.json").read_text())["cache"]
    for value in (0, 8, "2", True):
        summary["per_seed"][0]["depth"] = value
        (bad / "summary.json").write_text(json.dumps(summary))
        with pytest.raises(InputError) as err:
            load_checkpoint(bad)
        assert err.value.message == (f"{bad / 'summary.json'}: seed 0's depth {value!r} is not a rung count in 1..7; "
                                     f"retrain it with `pipeline train {cache_path} --out {bad} --overwrite`")


def test_defaults_and_flag_refusals(tmp_path):
    def cfg(**kw):
        return TrainConfig(cache=tmp_path, out=tmp_path / "r", **kw)

    assert (cfg().rung_grad, cfg().depth) == ("own", "val")
    assert (cfg(loss="last-head").rung_grad, cfg(loss="last-head").depth) == ("joint", "full")  # plain ENGINE
    assert not hasattr(cfg(arch="gcn"), "rung_grad") and not hasattr(cfg(arch="gcn"), "depth")  # ladder fields only
    with pytest.raises(InputError) as err:
        TrainConfig(cache=tmp_path, out=tmp_path / "r", rung_grad="none", depth="auto").validate()
    assert "--rung-grad none: choose one of own, joint" in err.value.message
    assert "--depth auto: choose one of val, full" in err.value.message
    with pytest.raises(InputError, match="--depth val chooses among trained heads; --loss last-head trains the last head alone: use --depth full"):
        TrainConfig(cache=tmp_path, out=tmp_path / "r", depth="val", loss="last-head").validate()
    with pytest.raises(InputError, match="--rung-grad own with --loss last-head would leave every rung but the last untrained: use --rung-grad joint"):
        TrainConfig(cache=tmp_path, out=tmp_path / "r", rung_grad="own", loss="last-head").validate()
    with pytest.raises(InputError, match="--rung-grad is for --arch ladder"):
        TrainConfig(cache=tmp_path, out=tmp_path / "r", arch="gcn", rung_grad="own").validate()
    with pytest.raises(InputError, match="--depth is for --arch ladder; it has no effect with --arch mlp: leave it out"):
        TrainConfig(cache=tmp_path, out=tmp_path / "r", arch="mlp", depth="val").validate()


def test_report_names_each_seeds_answering_rung(depth_run, tmp_path):
    from pipeline.report import write_report

    root, _, _ = depth_run
    cut = tmp_path / "runs" / "cut"
    shutil.copytree(root / "run", cut)
    summary = json.loads((cut / "summary.json").read_text())
    summary["per_seed"][0]["depth"] = 3
    (cut / "summary.json").write_text(json.dumps(summary))
    md = write_report([cut], tmp_path / "report").read_text()
    assert ("Depth chosen on validation (`--depth val`; the rungs above are dropped): seed 0 answers with rung 2 "
            "(LLM state 2).") in md
