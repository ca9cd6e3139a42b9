"""The fine-tuning rows of docs/results.md with a learning rate chosen on validation.

    python scripts/finetune_lr_grid.py CACHE OUT_ROOT [--split S] [--archs lora,ia3,finetune] [--jobs 2] [-- TRAIN FLAGS]

For each arch, in two phases:
1. seed 0 at every learning rate of the arch's grid (``OUT_ROOT/ARCH-lrLR-seed0``); the rate of
   best validation accuracy is kept (ties: the first of the grid);
2. seeds 1 and 2 at that rate, a run each (``OUT_ROOT/ARCH-lrLR-seed1``, ``-seed2``).
Then ``OUT_ROOT/ARCH-best.json`` names the three run folders that make the arch's row
(``scripts/results_cost.py --row GRAPH MODEL RUN+RUN+RUN``) and every rate's validation accuracy.

Every run is ``pipeline train`` with the arch's defaults (at most 3 epochs, patience 2) and
``--num-threads THREADS``, plus the flags after ``--`` (``-- --device cuda``). ``--jobs N`` runs N trainings at once (one arch's second phase
before the next arch's first). A finished run folder is not redone; a killed run continues
from its resumable state when the script runs again. Hours of CPU at 32 tokens on
SmolLM2-135M; minutes on a GPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

GRID = {"lora": ("3e-4", "1e-3", "3e-3"), "ia3": ("1e-3", "3e-3", "1e-2"), "finetune": ("1e-5", "3e-5", "1e-4")}
REST_SEEDS = (1, 2)


def seed_run(root: Path, arch: str, lr: str, seed: int) -> Path:
    return root / f"{arch}-lr{lr}-seed{seed}"


def val_acc(run: Path) -> float:
    return float(json.loads((run / "summary.json").read_text())["val_acc_mean"])


def train_cmd(args, arch: str, lr: str, seed: int, out: Path) -> list[str]:
    return [args.pipeline, "--quiet", "train", args.cache, "--arch", arch, "--out", str(out), "--seeds", str(seed),
            "--split", args.split, "--lr", lr, "--num-threads", str(args.threads), *args.train_flags]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache")
    ap.add_argument("root", type=Path)
    ap.add_argument("--split", default="random_60_20_20")
    ap.add_argument("--archs", default="lora,ia3,finetune")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pipeline", default="pipeline", help="the pipeline command")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = ap.parse_args(argv[:cut])
    args.train_flags = argv[cut + 1:]
    archs = args.archs.split(",")
    unknown = [a for a in archs if a not in GRID]
    if unknown:
        raise SystemExit(f"--archs: {', '.join(unknown)} has no grid; choose from {', '.join(GRID)}")
    args.root.mkdir(parents=True, exist_ok=True)

    # (arch, phase, lr, seed, out): phase 2 enters once its arch's phase 1 is done
    pending = [(a, 1, lr, 0, seed_run(args.root, a, lr, 0)) for a in archs for lr in GRID[a]]
    running: dict[Path, tuple[subprocess.Popen, tuple]] = {}
    failed = []

    def priority(task):  # arch order first, then phase: an arch's row completes before the next starts
        return archs.index(task[0]), task[1]

    def finish_phase1(arch: str) -> None:
        runs = [seed_run(args.root, arch, lr, 0) for lr in GRID[arch]]
        if not all((r / "summary.json").is_file() for r in runs):
            return
        vals = {lr: val_acc(r) for lr, r in zip(GRID[arch], runs)}
        best = max(GRID[arch], key=lambda lr: vals[lr])  # first of the grid on ties
        for seed in REST_SEEDS:
            rest = seed_run(args.root, arch, best, seed)
            if rest not in running and not any(t[4] == rest for t in pending):
                pending.append((arch, 2, best, seed, rest))
        record = {"arch": arch, "lr": best, "seed0_val_acc": vals,
                  "runs": [str(seed_run(args.root, arch, best, seed)) for seed in (0, *REST_SEEDS)]}
        (args.root / f"{arch}-best.json").write_text(json.dumps(record, indent=2) + "\n")

    for a in archs:
        finish_phase1(a)
    while pending or running:
        pending.sort(key=priority)
        for task in list(pending):
            if len(running) >= args.jobs:
                break
            pending.remove(task)
            arch, phase, lr, seed, out = task
            if (out / "summary.json").is_file():
                if phase == 1:
                    finish_phase1(arch)
                continue
            log = out.with_name(out.name + ".log")
            print(f"{time.strftime('%H:%M:%S')} start {out.name}", flush=True)
            with open(log, "a") as f:
                running[out] = (subprocess.Popen(train_cmd(args, arch, lr, seed, out), stdout=f, stderr=subprocess.STDOUT), task)
        time.sleep(5)
        for out, (proc, task) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[out]
            print(f"{time.strftime('%H:%M:%S')} {out.name}: exit {proc.returncode}", flush=True)
            if proc.returncode != 0:
                lines = out.with_name(out.name + ".log").read_text(errors="replace").strip().splitlines()
                failed.append(f"{out.name} ({lines[-1] if lines else 'no output'})")
            elif task[1] == 1:
                finish_phase1(task[0])
    for a in archs:
        best = args.root / f"{a}-best.json"
        if best.is_file():
            record = json.loads(best.read_text())
            print(f"{a}: learning rate {record['lr']} (seed 0 validation {record['seed0_val_acc']}); row: {'+'.join(record['runs'])}")
    if failed:
        sys.exit("failed (see each one's .log beside it): " + "; ".join(failed))


if __name__ == "__main__":
    main()
