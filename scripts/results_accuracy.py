"""Accuracy against the same-encoder baselines, per graph and split -> docs/results/accuracy.json.

    python scripts/results_accuracy.py --out docs/results/accuracy.json \
        --row cora random_60_20_20 runs/cora-ladder runs/cora-gcn runs/cora-sage runs/cora-mlp \
        --row citeseer random_60_20_20 runs/cs-ladder runs/cs-gcn ...

Each --row takes GRAPH SPLIT LADDER_RUN BASELINE_RUN...: the ladder's answering-head test
accuracy and what `pipeline infer` answers with its stored exit policies
(``exit_test_acc_mean``), against the baseline run of best validation accuracy (a tie on
validation goes against the ladder: the tied run of higher test accuracy). Every run of a row
must have the same seeds (refused otherwise). The table's name is the file's stem
(``accuracy``, ``accuracy_gemma``). Then `python scripts/results_page.py`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from results_lib import pct, summary, write

KNOBS = ("standardize", "dropout", "lr", "layer", "hidden-channels", "num-layers")  # the baselines' tuned knobs


def baseline_name(run: str | Path, arch: str) -> str:
    """``SAGE --standardize --dropout 0.7``: the arch and each tuned knob the run set away from
    the arch's default (read from the run's train_config.json)."""
    from pipeline.core.options import flag_values
    from stage2_train.config import TrainConfig

    saved = json.loads((Path(run) / "train_config.json").read_text())
    default = flag_values(TrainConfig(cache=Path("x"), out=Path("y"), arch=arch))
    knobs = [k for k in KNOBS if saved.get(k) != default.get(k)]
    return " ".join([arch.upper(), *(f"--{k}" if saved[k] is True else f"--{k} {saved[k]}" for k in knobs)])


def row(graph: str, split: str, ladder_run: str, baseline_runs: list[str], runs_root: Path | None = None) -> dict:
    def named(run: str) -> str:  # the run folder as the table records it: relative to --runs-root
        return str(Path(run).resolve().relative_to(runs_root.resolve())) if runs_root else str(run)

    lad = summary(ladder_run)
    bases = [(run, summary(run)) for run in baseline_runs]
    for run, s in bases:
        if s["seeds"] != lad["seeds"]:
            raise SystemExit(f"{run}: seeds {s['seeds']} differ from the ladder's {lad['seeds']}; compare equal seeds")
    # a tie on validation (the same rounded accuracy) goes against the ladder: the tied
    # baseline of higher test accuracy is shown, the others are named beside it
    top = max(pct(s["val_acc_mean"]) for _, s in bases)
    tied = [(r, s) for r, s in bases if pct(s["val_acc_mean"]) == top]
    run, best = max(tied, key=lambda rs: rs[1]["test_acc_mean"])
    return {
        "graph": graph, "split": split, "seeds": lad["seeds"],
        "ladder": {"run": named(ladder_run), "val": pct(lad["val_acc_mean"]), "test_mean": pct(lad["test_acc_mean"]),
                   "test_std": pct(lad["test_acc_std"]), "exit_test_mean": pct(lad.get("exit_test_acc_mean")),
                   "exit_test_std": pct(lad.get("exit_test_acc_std"))},
        "baseline": {"name": baseline_name(run, best["arch"]), "run": named(run), "seeds": best["seeds"], "val": pct(best["val_acc_mean"]),
                     "test_mean": pct(best["test_acc_mean"]), "test_std": pct(best["test_acc_std"]),
                     "val_ties": [baseline_name(r, s["arch"]) for r, s in tied if r != run]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--row", nargs="+", action="append", required=True, metavar="GRAPH SPLIT LADDER_RUN BASELINE_RUN")
    ap.add_argument("--runs-root", type=Path, default=None, help="record run folders relative to this folder")
    ap.add_argument("--settings", default="", help="what the runs share (model, tokens, defaults), stored with the table")
    args = ap.parse_args()
    rows = []
    for r in args.row:
        if len(r) < 4:
            raise SystemExit(f"--row {' '.join(r)}: give GRAPH SPLIT LADDER_RUN and at least one BASELINE_RUN")
        rows.append(row(r[0], r[1], r[2], r[3:], args.runs_root))
    write(args.out, {"table": Path(args.out).stem, "settings": args.settings, "source": "run folders", "rows": rows})


if __name__ == "__main__":
    main()
