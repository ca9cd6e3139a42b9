"""TrainConfig validation (all problems at once, naming flags) and split resolution on real Cora."""

from __future__ import annotations

import re

import numpy as np
import pytest

from pipeline.core.errors import InputError
from stage2_train.config import TrainConfig
from stage2_train.data import resolve_split


def test_config_errors_are_collected_and_name_the_flags(tmp_path):
    with pytest.raises(InputError, match="^--arch ladderx: choose one of ladder, mlp, gcn, sage, lora, ia3, prefix, finetune$"):
        TrainConfig(cache=tmp_path, out=tmp_path / "run", arch="ladderx")  # the arch picks the config class
    cfg = TrainConfig(cache=tmp_path / "nope.zarr", out=tmp_path / "run", gnn="gin", lr=-1, seeds=(1, 1),
                      split="random:0.9,0.9,0.1")
    with pytest.raises(InputError) as err:
        cfg.validate()
    msg = err.value.message
    for part in ("--gnn gin: choose one of sage, gcn, gat", "--lr -1", "--seeds 1,1: seed 1 repeats", "--split random:0.9,0.9,0.1",
                 f"CACHE_DIR {tmp_path / 'nope.zarr'}: no such cache; create it with `pipeline encode GRAPH --out"):
        assert part in msg
    assert err.value.exit_code == 2


def test_baseline_flags_are_refused_for_the_wrong_arch(tmp_path):
    with pytest.raises(InputError, match="--rungs is for --arch ladder"):
        TrainConfig(cache=tmp_path, out=tmp_path / "r", arch="gcn", rungs=(0, 1)).validate()
    with pytest.raises(InputError, match="--layer is for --arch mlp/gcn/sage; it has no effect with --arch ladder: leave it out"):
        TrainConfig(cache=tmp_path, out=tmp_path / "r", layer=3).validate()
    assert TrainConfig(cache=tmp_path, out=tmp_path / "r", arch="sage").num_layers == 2
    assert TrainConfig(cache=tmp_path, out=tmp_path / "r").num_layers == 1


def test_builtin_split_uses_the_seed_file(cora):
    for seed in (0, 3):
        got = resolve_split(cora, "random_60_20_20", seed)
        want = cora.split_indices(f"random_60_20_20_seed{seed}")
        for k in ("train", "val", "test"):
            assert np.array_equal(got[k], np.sort(want[k]))
    assert {k: len(v) for k, v in resolve_split(cora, None, 0).items()} == {"train": 1624, "val": 542, "test": 542}
    pub = resolve_split(cora, "planetoid_public", 4)
    assert {k: len(v) for k, v in pub.items()} == {"train": 140, "val": 500, "test": 1000}


def test_random_split_is_seeded_and_disjoint(cora):
    a, b, c = (resolve_split(cora, "random:0.5,0.25,0.25", s) for s in (7, 7, 8))
    assert all(np.array_equal(a[k], b[k]) for k in a) and not np.array_equal(a["train"], c["train"])
    assert [len(a[k]) for k in ("train", "val", "test")] == [1354, 677, 677]
    assert len(np.intersect1d(a["train"], a["test"])) == 0


def test_the_default_split_is_the_column_else_the_files_else_random(write_graph):
    from pipeline.core.graph import load_graph
    from stage2_train.data import default_split

    ids = list(range(20))
    nodes = {"node_id": ids, "text": [f"text {i}" for i in ids], "label": [str(i % 2) for i in ids]}
    edges = {"src": [0], "dst": [1]}
    bare = load_graph(write_graph(nodes, edges, name="bare"))
    assert default_split(bare) == "random:0.6,0.2,0.2"
    for seed in (0, 1):  # what the default resolves to is the random split of that seed
        got, want = resolve_split(bare, None, seed), resolve_split(bare, "random:0.6,0.2,0.2", seed)
        assert all(np.array_equal(got[k], want[k]) for k in ("train", "val", "test"))
    assert [len(v) for v in resolve_split(bare, None, 0).values()] == [12, 4, 4]
    files = load_graph(write_graph(nodes, edges, name="files", splits={"random_60_20_20_seed0": {"train": ids[:10], "val": ids[10:15], "test": ids[15:]}}))
    assert default_split(files) == "random_60_20_20" and [len(v) for v in resolve_split(files, None, 0).values()] == [10, 5, 5]
    column = load_graph(write_graph({**nodes, "split": ["train"] * 14 + ["val"] * 3 + ["test"] * 3}, edges, name="column"))
    assert default_split(column) == "column" and [len(v) for v in resolve_split(column, None, 0).values()] == [14, 3, 3]


def test_unknown_split_lists_the_known_ones(cora):
    with pytest.raises(InputError, match=r"--split nope: graph 'cora' has no split 'nope' or 'nope_seed0' \(known: planetoid_public, random_60_20_20"):
        resolve_split(cora, "nope", 0)
    with pytest.raises(InputError, match="has no split column"):
        resolve_split(cora, "column", 0)


def test_loss_and_standardize_refusals(tmp_path):
    with pytest.raises(InputError) as err:
        TrainConfig(cache=tmp_path, out=tmp_path / "r", loss="first-head").validate()
    assert "--loss first-head: choose one of multi-exit, last-head" in err.value.message
    with pytest.raises(InputError, match="--rung-weights weighs the multi-exit loss; --loss last-head trains the last head alone"):
        TrainConfig(cache=tmp_path, out=tmp_path / "r", loss="last-head", rung_weights=(0.0, 1.0)).validate()
    with pytest.raises(InputError, match="--loss is for --arch ladder; it has no effect with --arch mlp: leave it out"):
        TrainConfig(cache=tmp_path, out=tmp_path / "r", arch="mlp", loss="last-head").validate()
    cfg = TrainConfig(cache=tmp_path, out=tmp_path / "r", arch="gcn", standardize=True).validate()
    assert cfg.to_dict()["standardize"] is True and "loss" not in cfg.to_dict()  # a baseline's config holds no ladder field
    with pytest.raises(InputError) as err:
        TrainConfig(cache=tmp_path, out=tmp_path / "r", readout="max").validate()
    assert "--readout max: choose one of target-mean, ego" in err.value.message
    with pytest.raises(InputError, match="--readout is for --arch ladder"):
        TrainConfig(cache=tmp_path, out=tmp_path / "r", arch="sage", readout="ego").validate()


def test_rung_activation_and_norm_refusals(tmp_path):
    with pytest.raises(InputError) as err:
        TrainConfig(cache=tmp_path, out=tmp_path / "r", rung_activation="tanh", rung_norm="batch").validate()
    assert "--rung-activation tanh: choose one of relu, elu" in err.value.message
    assert "--rung-norm batch: choose one of layer, none" in err.value.message
    with pytest.raises(InputError, match="--rung-activation is for --arch ladder"):
        TrainConfig(cache=tmp_path, out=tmp_path / "r", arch="gcn", rung_activation="elu").validate()
    with pytest.raises(InputError, match="--rung-norm is for --arch ladder"):
        TrainConfig(cache=tmp_path, out=tmp_path / "r", arch="mlp", rung_norm="none").validate()


def test_sampler_flag_refusals(tmp_path):
    with pytest.raises(InputError) as err:
        TrainConfig(cache=tmp_path, out=tmp_path / "r", hops=4, fanout=-1).validate()
    assert "--hops 4: must be 1..3" in err.value.message
    assert "--fanout -1: must be >= 0 (0 keeps every neighbour)" in err.value.message
    TrainConfig(cache=tmp_path, out=tmp_path / "r", hops=1, fanout=0).validate()  # the reference's ego graph


def _train_help(*args: str) -> str:
    from typer.testing import CliRunner

    from pipeline.cli import app

    res = CliRunner().invoke(app, ["train", *args, "--help"], env={"COLUMNS": "4000", "TERMINAL_WIDTH": "4000"})  # typer reads TERMINAL_WIDTH once per process: the width test_config_replay uses
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.parametrize(
    "args, shown, hidden",
    [
        ((), ("--rung-grad", "--layer", "--hops", "--num-threads"), ()),
        (("--arch", "ladder"), ("--rung-grad", "--hops", "--num-threads"), ("--layer ",)),
        (("--arch=gcn",), ("--layer", "--hops", "--num-threads"), ("--rung-grad",)),
        (("--arch", "lora"), ("--num-threads", "--seeds"), ("--rung-grad", "--layer ", "--hops")),
        (("--arch", "bogus"), ("--rung-grad", "--layer"), ()),  # an unknown arch: every panel; the run refuses it
    ],
)
def test_train_help_lists_the_panels_of_the_chosen_arch(args: tuple[str, ...], shown: tuple[str, ...], hidden: tuple[str, ...]) -> None:
    text = _train_help(*args)
    for flag in shown:
        assert flag in text, (args, flag)
    for flag in hidden:
        assert flag not in text, (args, flag)


def test_train_help_is_shorter_for_each_kind_of_model() -> None:
    every = len(_train_help().splitlines())
    for arch in ("ladder", "mlp", "lora"):
        assert len(_train_help("--arch", arch).splitlines()) < every, arch


def test_long_choices_get_a_name_and_are_listed_in_the_help() -> None:
    from pipeline.core.options import choices_metavar, option

    short = option("a", "Pick a or b.", choices=("a", "b")).metadata["cli"]
    assert choices_metavar("pick", short) == ("[a|b]", "Pick a or b.")
    named = option("x", "alpha or beta-gamma-delta.", choices=("alpha", "beta-gamma-delta")).metadata["cli"]
    assert choices_metavar("mode", named) == ("MODE", "alpha or beta-gamma-delta.")
    unnamed = option("x", "How to go.", choices=("alpha", "beta-gamma-delta")).metadata["cli"]
    assert choices_metavar("mode", unnamed) == ("MODE", "How to go. One of: alpha, beta-gamma-delta.")
    beta = option("x", "alpha or beta-gamma.", choices=("alpha", "beta-gamma", "beta")).metadata["cli"]  # beta-gamma is not beta
    assert choices_metavar("mode", beta) == ("MODE", "alpha or beta-gamma. One of: alpha, beta-gamma, beta.")
    text = _train_help()
    assert "[ego|rwr|full]" in text and "[ladder|" not in text
    assert re.search(r"--arch +ARCH ", text) and re.search(r"--loss +LOSS ", text)
