"""Cost against fine-tuning -> docs/results/cost.json, from run folders' summary.json["cost"].

    python scripts/results_cost.py --out docs/results/cost.json \
        --row cora "G-Ladder" runs/cora-ladder --row cora LoRA runs/cora-lora ...

Per --row GRAPH MODEL RUN: test accuracy as infer answers it (a ladder with its stored exit
policies), seeds, trainable parameters, peak memory (the whole
pipeline's, encode included, when the cache recorded it; else training's) and total seconds
per seed (encode + tuning + training). ``--keep FILE --keep-model MODEL ...`` also keeps the
rows of those models from an earlier table, each with the source it came from. Then
`python scripts/results_page.py`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from results_lib import infer_accuracy, summary, write


def row(graph: str, model: str, run: str) -> dict:
    s = summary(run)
    cost = s["cost"]
    peak = cost.get("pipeline_peak_memory_bytes") or cost["peak_memory_bytes"]
    test_mean, test_std = infer_accuracy(s)
    return {"graph": graph, "model": model, "run": str(run), "source": "run folder", "seeds": s["seeds"], "test_mean": test_mean,
            "test_std": test_std, "trainable_params": cost["trainable_params"],
            "peak_memory_mib": round(peak / 2**20), "peak_includes_encode": cost.get("pipeline_peak_memory_bytes") is not None,
            "total_s_per_seed": None if cost["total_s"] is None else round(cost["total_s"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--row", nargs=3, action="append", required=True, metavar=("GRAPH", "MODEL", "RUN"))
    ap.add_argument("--settings", default="")
    ap.add_argument("--keep", type=Path, default=None, help="an earlier cost.json")
    ap.add_argument("--keep-model", action="append", default=[], help="a model whose rows of --keep are kept")
    args = ap.parse_args()
    rows = [row(*r) for r in args.row]
    if args.keep is not None:
        earlier = json.loads(args.keep.read_text())
        kept = [{**r, "source": r.get("source", earlier["source"])} for r in earlier["rows"] if r["model"] in args.keep_model]
        order = {g: i for i, g in enumerate(dict.fromkeys(r["graph"] for r in earlier["rows"] + rows))}
        rows = sorted(rows + kept, key=lambda r: order[r["graph"]])  # stable: each graph's fresh rows first
    sources = sorted({r["source"] for r in rows})
    write(args.out, {"table": "cost", "settings": args.settings, "source": "; ".join(sources), "rows": rows})


if __name__ == "__main__":
    main()
