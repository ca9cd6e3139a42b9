"""Early exit, the run's stored policy -> docs/results/early_exit.json.

    pipeline bench infer --checkpoint runs/cora-ladder --max-targets 200 --json bench/cora-infer.json
    python scripts/results_early_exit.py --out docs/results/early_exit.json \
        --row cora random_60_20_20 bench/cora-infer.json --row citeseer random_60_20_20 bench/cs-infer.json

Per --row GRAPH SPLIT BENCH_JSON: the policy `pipeline infer` runs by default (``infer_default``),
its relative accuracy drop and its speed-up against the run's chosen depth and against the
whole LLM (``speedup_vs_full_llm``). Then `python scripts/results_page.py`.
"""

from __future__ import annotations

import argparse

from pipeline.core.bench_json import read_bench
from results_lib import write


def row(graph: str, split: str, bench_json: str) -> dict:
    figures = read_bench(bench_json)[1]
    policy, r = next((k, v) for k, v in figures.items() if v["infer_default"])
    depth = figures["none"]["mean_exit_layer"]  # `none` runs every target to the run's deepest rung
    return {"graph": graph, "split": split, "seed": r.get("seed"), "chosen_depth": int(depth), "policy": policy, "num_test": r["num_test"],
            "rel_drop_pct": round(100 * r["rel_drop"], 2), "speedup_vs_chosen_depth": round(r["speedup"], 2),
            "speedup_vs_full_llm": None if "speedup_vs_full_llm" not in r else round(r["speedup_vs_full_llm"], 2),
            "llm_layer_fraction": None if "llm_layer_fraction" not in r else round(r["llm_layer_fraction"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--row", nargs=3, action="append", required=True, metavar=("GRAPH", "SPLIT", "BENCH_JSON"))
    ap.add_argument("--settings", default="")
    args = ap.parse_args()
    write(args.out, {"table": "early_exit", "settings": args.settings, "source": "pipeline bench infer --json",
                     "rows": [row(*r) for r in args.row]})


if __name__ == "__main__":
    main()
