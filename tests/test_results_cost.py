"""scripts/results_cost.py: a row pooled from run folders of one setting on other seeds equals
the row of one run over all those seeds, a row on a subset of a run's seeds equals the run of
those seeds; folders of other settings or of other caches (not the cascade's tuned ones), the
same seed twice and a seed no folder has are refused."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import results_cost  # noqa: E402

NODES = 45


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cora_cache):
    """A 45-node Cora ladder trained on seeds 0-2 in one run, and in two (0; 1-2), and seed 0 at another lr."""
    from stage2_train.config import TrainConfig
    from stage2_train.run import run as train

    root = tmp_path_factory.mktemp("pooled")
    _, cache = cora_cache(NODES, max_length=32, block_size=16)
    _, other_cache = cora_cache(NODES, max_length=24, block_size=16)
    for name, seeds, lr, on in (("all", (0, 1, 2), 3e-3, cache), ("s0", (0,), 3e-3, cache), ("s12", (1, 2), 3e-3, cache),
                                ("s0-other-lr", (0,), 1e-3, cache), ("s12-other-cache", (1, 2), 3e-3, other_cache)):
        # --state-every differs from run to run: it changes when the state is written, not what a seed computes
        train(TrainConfig(cache=on, out=root / name, seeds=seeds, epochs=3, batch_size=16, hidden_channels=16, lr=lr,
                          state_every=len(name)))
    return root


def test_a_pooled_row_equals_the_row_of_one_run_over_the_same_seeds(runs):
    whole = results_cost.row("cora", "G-Ladder", str(runs / "all"))
    pooled = results_cost.row("cora", "G-Ladder", f"{runs / 's0'}+{runs / 's12'}")
    assert pooled["seeds"] == whole["seeds"] == [0, 1, 2]
    assert pooled["lr"] == whole["lr"] == "3e-3"
    assert (pooled["test_mean"], pooled["test_std"]) == (whole["test_mean"], whole["test_std"])
    assert pooled["trainable_params"] == whole["trainable_params"]
    assert pooled["peak_of"] == whole["peak_of"] == "encode and training"


def test_a_row_on_some_seeds_equals_the_run_of_those_seeds(runs):
    subset = results_cost.row("cora", "G-Ladder", str(runs / "all"), seeds=[1, 2])
    alone = results_cost.row("cora", "G-Ladder", str(runs / "s12"))
    assert subset["seeds"] == alone["seeds"] == [1, 2]
    assert (subset["test_mean"], subset["test_std"]) == (alone["test_mean"], alone["test_std"])
    with pytest.raises(SystemExit) as err:
        results_cost.row("cora", "G-Ladder", str(runs / "s12"), seeds=[0, 1])
    assert str(err.value) == f"{runs / 's12'}: no seed [0] (trained: [1, 2])"


@pytest.mark.parametrize(("parts", "message"), [
    (("s0", "s0-other-lr"), "trained with other settings than"),
    (("s0", "all"), "seed listed twice ([0, 0, 1, 2]); a row pools distinct seeds"),
    (("s0", "s12-other-cache"), "differs from the others' and holds no LLM tuned on the run's seed [0]; a row pools runs of one "
                                "cache, or of caches each tuned on its run's seed"),
])
def test_pooling_other_settings_or_a_seed_twice_is_refused(runs, parts, message):
    with pytest.raises(SystemExit) as err:
        results_cost.row("cora", "LoRA", "+".join(str(runs / p) for p in parts))
    assert message in str(err.value)
    if parts[1] == "s0-other-lr":
        assert str(err.value).endswith("(lr); a row pools seeds of one setting")


def test_a_seed_timed_on_its_last_attempt_only_counts_its_epochs_as_a_lower_bound(runs, tmp_path):
    """A ledger that counted only a resumed seed's last attempt (train_s below its own epochs'
    times) gives way to the sum of its epochs, and the row names that seed."""
    import json
    import shutil

    whole = results_cost.row("cora", "G-Ladder", str(runs / "all"))
    assert whole["total_s_lower_bound_seeds"] == []
    run = tmp_path / "resumed"
    shutil.copytree(runs / "all", run)
    cost = json.loads((run / "cost.json").read_text())
    (entry,) = [e for e in cost["per_seed"] if e["seed"] == 1]
    shortfall = entry["train_s"] - sum(entry["epoch_s_each"]) + 0.5  # as if 0.5 s of its epochs were timed
    entry["train_s"] -= shortfall
    cost["cost"]["train_s"][1] -= shortfall
    (run / "cost.json").write_text(json.dumps(cost))
    resumed = results_cost.row("cora", "G-Ladder", str(run))
    assert resumed["total_s_lower_bound_seeds"] == [1]
    other = [e["train_s"] for e in cost["per_seed"] if e["seed"] != 1]
    encode_s = cost["cost"]["total_s"] - cost["cost"]["train_s_mean"]
    assert resumed["total_s_per_seed"] == round(encode_s + (sum(other) + sum(entry["epoch_s_each"])) / 3)


def test_a_cascade_tuning_timed_on_its_last_attempt_only_counts_its_epochs(runs):
    """The same rule for the tuning a cascade's cache records (``model_tuning``: run, seed, train_s)."""
    import json

    entry = [e for e in json.loads((runs / "all" / "cost.json").read_text())["per_seed"] if e["seed"] == 1][0]
    tuning = {"run": str(runs / "all"), "seed": 1, "train_s": entry["train_s"]}
    assert results_cost.tuning_shortfall(tuning) == 0.0
    short = sum(entry["epoch_s_each"]) / 2  # as if half its epochs were timed
    assert results_cost.tuning_shortfall({**tuning, "train_s": short}) == sum(entry["epoch_s_each"]) - short
