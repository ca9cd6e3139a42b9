"""Cost against fine-tuning -> docs/results/cost.json, from run folders' summary.json["cost"].

    python scripts/results_cost.py --out docs/results/cost.json \
        --row cora "G-Ladder" runs/cora-ladder --row cora LoRA runs/cora-lora ...

Per --row GRAPH MODEL RUN: test accuracy as infer answers it (a ladder with its stored exit
policies), seeds, learning rate, trainable parameters, peak memory (the whole pipeline's: a
cascade's tuning, the encode when the cache recorded it, training; ``peak_of`` says which) and
total seconds per seed (encode + tuning + training; ``total_s_lower_bound_seeds`` names the
seeds whose ledger counted only the last attempt of a resumed training, or of a cascade's LLM
tuning, which count the sum of their epochs' times instead: the row's total is then a lower bound).

RUN may join run folders of the same settings on other seeds with ``+``
(``runs/lora-seed0+runs/lora-seed1``), or be an ``ARCH-best.json`` or ``lora-cascade.json`` of
scripts/finetune_lr_grid.py, which names them and the grid: the row pools their seeds. Runs on
different caches pool only when each cache's LLM was tuned on its run's seed (the cascade).
``--seeds 0,1,2`` puts every row on those seeds (equal seed counts on both sides of a
comparison). ``--keep FILE --keep-model MODEL ...`` also keeps the rows of those models from an
earlier table as they are. Then `python scripts/results_page.py`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from results_lib import infer_accuracy, run_files, summary, write
from stage2_train.config import FINETUNE_ARCHS


def row(graph: str, model: str, run: str, seeds: list[int] | None = None) -> dict:
    """The table's row of the run folder(s) ``run`` (``A+B`` pools folders, ``ARCH-best.json`` of
    scripts/finetune_lr_grid.py names them and the grid), on ``seeds`` (None: all)."""
    grid = json.loads(Path(run).read_text()) if run.endswith(".json") else None
    runs = grid["runs"] if grid else run.split("+")
    s = seed_summary(runs, seeds)
    lr = lr_text(s["lr"])
    if grid:
        chosen = f"{lr_text(grid['lr'])} (best on seed 0's val of {', '.join(lr_text(x) for x in grid['seed0_val_acc'])})"
        lr = f"{grid['arch']} {chosen}, then {lr}" if grid.get("cascade") else chosen
    cost = s["cost"]
    peak = cost.get("pipeline_peak_memory_bytes") or cost["peak_memory_bytes"]  # training's alone when the encode's is unknown
    test_mean, test_std = infer_accuracy(s)
    return {"graph": graph, "model": model, "run": str(run), "source": "run folder", "seeds": s["seeds"], "lr": lr, "test_mean": test_mean,
            "test_std": test_std, "trainable_params": cost["trainable_params"],
            "peak_memory_mib": round(peak / 2**20), "peak_of": cost["peak_of"],
            "total_s_per_seed": None if cost["total_s"] is None else round(cost["total_s"]),
            "total_s_lower_bound_seeds": cost["total_s_lower_bound_seeds"]}


def lr_text(lr) -> str:
    """A learning rate as the CLI's help writes it: 3e-4, 1e-2, 2.5e-5."""
    mantissa, exponent = f"{float(lr):e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


# checkpoint.json entries that may differ between the run folders of one row: they do not change what one seed computes
POOL_FREE = ("seeds", "out", "overwrite", "state_every", "dist_timeout")


def resumed_shortfall(entry: dict) -> float:
    """Seconds a seed's ``train_s`` falls short of its own epochs' times (0.0 when it does not):
    a seed resumed under a ledger that timed only the last attempt."""
    return max(sum(entry.get("epoch_s_each") or []) - float(entry["train_s"]), 0.0)


def tuning_shortfall(tuning: dict) -> float:
    """The same shortfall for the tuning of a cascade's LLM (``model_tuning`` of its cache's
    manifest: the fine-tuning run and seed that ``pipeline export`` merged)."""
    (entry,) = [e for e in summary(tuning["run"])["per_seed"] if e["seed"] == tuning["seed"]]
    return resumed_shortfall({**entry, "train_s": tuning["train_s"]})


def seed_summary(runs: list[str], seeds: list[int] | None) -> dict:
    """The accuracies and costs of one setting's seeds, from one run folder or several trained
    with the same flags on other seeds: test accuracy's mean and population std over the seeds
    (as summary.json), encode, tuning and training time's per-seed mean, the peaks' max. A seed
    of ``seeds`` that no folder trained is refused."""
    from stage2_train import cache_binding

    files = [run_files(r) for r in runs]
    parts = [f.summary for f in files]
    free = POOL_FREE
    if len({f.config.get("cache") for f in files}) > 1:  # only the cascade's: each seed's cache holds an LLM tuned on that seed
        for r, f, p in zip(runs, files, parts):
            tuning = f.manifest.get("model_tuning") or {}
            if p["seeds"] != [tuning.get("seed")]:
                raise SystemExit(f"{r}: its cache {f.config.get('cache')} differs from the others' and holds no LLM tuned on "
                                 f"the run's seed {p['seeds']}; a row pools runs of one cache, or of caches each tuned on its run's seed")
        free = (*POOL_FREE, "cache", cache_binding.KEY)
    configs = [{k: v for k, v in f.config.items() if k not in free} for f in files]
    for r, c in zip(runs[1:], configs[1:]):
        differ = sorted(k for k in set(c) | set(configs[0]) if c.get(k) != configs[0].get(k))
        if differ:
            raise SystemExit(f"{r}: trained with other settings than {runs[0]} ({', '.join(differ)}); a row pools seeds of one setting")
    trained = [seed for p in parts for seed in p["seeds"]]
    if len(set(trained)) != len(trained):
        raise SystemExit(f"{'+'.join(runs)}: seed listed twice ({trained}); a row pools distinct seeds")
    missing = sorted(set(seeds or []) - set(trained))
    if missing:
        raise SystemExit(f"{'+'.join(runs)}: no seed {missing} (trained: {trained})")
    keep = lambda seed: seeds is None or seed in seeds  # noqa: E731
    per_seed = [e for p in parts for e in p["per_seed"] if keep(e["seed"])]
    costs = [p["cost"] for p in parts]
    # a seed's training time; a ledger that counted only a resumed seed's last attempt (train_s
    # below the seed's own epoch times) gives way to the sum of its epochs: a lower bound
    train_s, lower_bound = [], []
    for e in per_seed:
        shortfall = resumed_shortfall(e)
        if shortfall:
            lower_bound.append(e["seed"])
        train_s.append(e["train_s"] + shortfall)
    fixed = []  # encode + tuning, of each kept seed; a cascade's tuning by the same rule as training
    for f, p, c in zip(files, parts, costs):
        tuning = f.manifest.get("model_tuning") if f.config.get("arch") not in FINETUNE_ARCHS else None
        shortfall = tuning_shortfall(tuning) if tuning else 0.0
        for seed in filter(keep, p["seeds"]):
            if shortfall and seed not in lower_bound:
                lower_bound.append(seed)
            fixed.append(None if c["total_s"] is None else c["total_s"] - c["train_s_mean"] + shortfall)
    peaks = [c.get("pipeline_peak_memory_bytes") for c in costs]
    tuned = [t["run"] for f in files if (t := f.manifest.get("model_tuning")) and f.config.get("arch") not in FINETUNE_ARCHS]
    for run in tuned:  # the cascade: the LLM's tuning is part of the pipeline, its peak too
        peaks.append(summary(run)["cost"].get("pipeline_peak_memory_bytes"))
    if not costs[0].get("encode_used", True):
        peak_of = "training (the LLM inside)"
    elif None in peaks:
        peak_of = "training"
    else:
        peak_of = "tuning, encode and training" if tuned else "encode and training"
    exits = [e["exit_policy"]["test_acc"] for e in per_seed if e.get("exit_policy") and "test_acc" in e["exit_policy"]]
    tests = [e["test_acc"] for e in per_seed]
    return {
        "seeds": [e["seed"] for e in per_seed],
        "lr": configs[0]["lr"],
        "test_acc_mean": float(np.mean(tests)), "test_acc_std": float(np.std(tests)),
        "exit_test_acc_mean": float(np.mean(exits)) if len(exits) == len(per_seed) else None,
        "exit_test_acc_std": float(np.std(exits)) if len(exits) == len(per_seed) else None,
        "cost": {
            "trainable_params": costs[0]["trainable_params"],
            "peak_memory_bytes": max(c["peak_memory_bytes"] for c in costs),
            "pipeline_peak_memory_bytes": None if None in peaks else max(peaks),
            "peak_of": peak_of,
            "total_s": None if None in fixed else float(np.mean(fixed)) + float(np.mean(train_s)),
            "total_s_lower_bound_seeds": sorted(lower_bound),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--row", nargs=3, action="append", required=True, metavar=("GRAPH", "MODEL", "RUN"))
    ap.add_argument("--seeds", default=None, help="comma-separated: every row on these seeds only (default: each run's)")
    ap.add_argument("--settings", default="")
    ap.add_argument("--keep", type=Path, default=None, help="an earlier cost.json")
    ap.add_argument("--keep-model", action="append", default=[], help="a model whose rows of --keep are kept")
    args = ap.parse_args()
    seeds = None if args.seeds is None else [int(x) for x in args.seeds.split(",")]
    rows = [row(*r, seeds=seeds) for r in args.row]
    if args.keep is not None:
        earlier = json.loads(args.keep.read_text())
        kept = [r for r in earlier["rows"] if r["model"] in args.keep_model]  # each names its source
        order = {g: i for i, g in enumerate(dict.fromkeys(r["graph"] for r in rows + earlier["rows"]))}  # as --row gives them
        rows = sorted(rows + kept, key=lambda r: order[r["graph"]])  # stable: each graph's fresh rows first
    sources = sorted({r["source"] for r in rows})
    write(args.out, {"table": "cost", "settings": args.settings, "source": "; ".join(sources), "rows": rows})


if __name__ == "__main__":
    main()
