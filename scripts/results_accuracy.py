"""Accuracy against the same-encoder baselines, per graph and split -> docs/results/accuracy.json.

    python scripts/results_accuracy.py --out docs/results/accuracy.json \
        --row cora random_60_20_20 runs/cora-ladder runs/cora-gcn runs/cora-sage runs/cora-mlp \
        --row citeseer random_60_20_20 runs/cs-ladder runs/cs-gcn ...

Each --row takes GRAPH SPLIT LADDER_RUN BASELINE_RUN...: the ladder's answering-head test
accuracy and what `pipeline infer` answers with its stored exit policies
(``exit_test_acc_mean``), against the baseline run of best validation accuracy. Every run of a
row must have the same seeds (refused otherwise). Then `python scripts/results_page.py`.
"""

from __future__ import annotations

import argparse

from results_lib import pct, summary, write


def row(graph: str, split: str, ladder_run: str, baseline_runs: list[str]) -> dict:
    lad = summary(ladder_run)
    bases = [(run, summary(run)) for run in baseline_runs]
    for run, s in bases:
        if s["seeds"] != lad["seeds"]:
            raise SystemExit(f"{run}: seeds {s['seeds']} differ from the ladder's {lad['seeds']}; compare equal seeds")
    run, best = max(bases, key=lambda rs: rs[1]["val_acc_mean"])
    return {
        "graph": graph, "split": split, "seeds": lad["seeds"],
        "ladder": {"run": str(ladder_run), "val": pct(lad["val_acc_mean"]), "test_mean": pct(lad["test_acc_mean"]),
                   "test_std": pct(lad["test_acc_std"]), "exit_test_mean": pct(lad.get("exit_test_acc_mean")),
                   "exit_test_std": pct(lad.get("exit_test_acc_std"))},
        "baseline": {"name": best["arch"], "run": str(run), "seeds": best["seeds"], "val": pct(best["val_acc_mean"]),
                     "test_mean": pct(best["test_acc_mean"]), "test_std": pct(best["test_acc_std"])},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--row", nargs="+", action="append", required=True, metavar="GRAPH SPLIT LADDER_RUN BASELINE_RUN")
    ap.add_argument("--settings", default="", help="what the runs share (model, tokens, defaults), stored with the table")
    args = ap.parse_args()
    rows = []
    for r in args.row:
        if len(r) < 4:
            raise SystemExit(f"--row {' '.join(r)}: give GRAPH SPLIT LADDER_RUN and at least one BASELINE_RUN")
        rows.append(row(r[0], r[1], r[2], r[3:]))
    write(args.out, {"table": "accuracy", "settings": args.settings, "source": "run folders", "rows": rows})


if __name__ == "__main__":
    main()
