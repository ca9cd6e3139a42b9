"""int8 against float16 caches, and the caching speed-up -> docs/results/storage.json.

    python scripts/results_storage.py --out docs/results/storage.json \
        --float16 runs/cora-f16-ladder CACHE_F16 --int8 runs/cora-int8-ladder CACHE_INT8 --bench-train bench/train.json

The ladder runs give test and validation accuracy; the caches' manifests give the bytes per
node; ``pipeline bench train --json`` gives the epoch times. Then `python scripts/results_page.py`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.core.bench_json import read_bench
from results_lib import infer_accuracy, pct, summary, write


def storage_row(name: str, run: str, cache: str) -> dict:
    s = summary(run)
    m = json.loads((Path(cache) / "manifest.json").read_text())
    per_value = 1 if m["storage_dtype"] == "int8" else 2
    scales = 4 * len(m["layers"]) if m["storage_dtype"] == "int8" else 0
    return {"storage": name, "bytes_per_node": len(m["layers"]) * m["hidden_size"] * per_value + scales,
            **dict(zip(("test_mean", "test_std"), infer_accuracy(s))), "val_mean": pct(s["val_acc_mean"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--float16", nargs=2, required=True, metavar=("RUN", "CACHE"))
    ap.add_argument("--int8", nargs=2, required=True, metavar=("RUN", "CACHE"))
    ap.add_argument("--bench-train", required=True, metavar="BENCH_JSON")
    ap.add_argument("--settings", default="")
    args = ap.parse_args()
    f = read_bench(args.bench_train)[1]
    write(args.out, {"table": "storage", "settings": args.settings, "source": "run folders and pipeline bench train --json",
                     "int8": [storage_row("float16", *args.float16), storage_row("int8", *args.int8)],
                     "caching": {"epoch_s_cached": f["epoch_s_cached"], "epoch_s_uncached": f["epoch_s_uncached"],
                                 "speedup": f["caching_speedup"], "uncached_extrapolated_from_batches": f.get("uncached_batches_timed")}})


if __name__ == "__main__":
    main()
