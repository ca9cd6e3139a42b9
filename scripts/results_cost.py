"""Cost against fine-tuning -> docs/results/cost.json, from run folders' summary.json["cost"].

    python scripts/results_cost.py --out docs/results/cost.json \
        --row cora "G-Ladder" runs/cora-ladder --row cora LoRA runs/cora-lora ...

Per --row GRAPH MODEL RUN: test accuracy, seeds, trainable parameters, peak memory (the whole
pipeline's, encode included, when the cache recorded it; else training's) and total seconds
per seed (encode + tuning + training). Then `python scripts/results_page.py`.
"""

from __future__ import annotations

import argparse

from results_lib import pct, summary, write


def row(graph: str, model: str, run: str) -> dict:
    s = summary(run)
    cost = s["cost"]
    peak = cost.get("pipeline_peak_memory_bytes") or cost["peak_memory_bytes"]
    return {"graph": graph, "model": model, "run": str(run), "seeds": s["seeds"], "test_mean": pct(s["test_acc_mean"]),
            "test_std": pct(s["test_acc_std"]), "trainable_params": cost["trainable_params"],
            "peak_memory_mib": round(peak / 2**20), "peak_includes_encode": cost.get("pipeline_peak_memory_bytes") is not None,
            "total_s_per_seed": None if cost["total_s"] is None else round(cost["total_s"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--row", nargs=3, action="append", required=True, metavar=("GRAPH", "MODEL", "RUN"))
    ap.add_argument("--settings", default="")
    args = ap.parse_args()
    write(args.out, {"table": "cost", "settings": args.settings, "source": "run folders", "rows": [row(*r) for r in args.row]})


if __name__ == "__main__":
    main()
