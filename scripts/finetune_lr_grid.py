"""The fine-tuning rows of docs/results.md with a learning rate chosen on validation.

    python scripts/finetune_lr_grid.py CACHE OUT_ROOT [--split S] [--archs lora,ia3,finetune] [--jobs 2]
        [--cascade] [-- TRAIN FLAGS]

For each arch, in two phases:
1. seed 0 at every learning rate of the arch's grid (``OUT_ROOT/ARCH-lrLR-seed0``); the rate of
   best validation accuracy is kept (ties: the first of the grid);
2. seeds 1 and 2 at that rate, a run each (``OUT_ROOT/ARCH-lrLR-seed1``, ``-seed2``).
Then ``OUT_ROOT/ARCH-best.json`` names the three run folders that make the arch's row
(``scripts/results_cost.py --row GRAPH MODEL OUT_ROOT/ARCH-best.json``) and every rate's
validation accuracy.

``--cascade`` adds, once LoRA's seed S is trained at its kept rate, the SimTeG/GLEM cascade of
that seed: ``pipeline export`` (``OUT_ROOT/cascade-seedS.model``), ``pipeline encode`` of the
cache's graph with the tuned LLM and the cache's settings (``OUT_ROOT/cascade-seedS.zarr``) and
``pipeline train --arch sage`` on it (``OUT_ROOT/cascade-seedS``); ``OUT_ROOT/lora-cascade.json``
names the three SAGE runs.

Every training is ``pipeline train`` with the arch's defaults (at most 3 epochs, patience 2)
and ``--num-threads THREADS``, plus the flags after ``--`` (``-- --device cuda``). ``--jobs N``
runs N at once (an arch's later phases before the next arch's first). What is finished is not
redone, and a killed training or encode continues from its resumable state when the script
runs again. Hours of CPU at 32 tokens on SmolLM2-135M; minutes on a GPU.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

GRID = {"lora": ("3e-4", "1e-3", "3e-3"), "ia3": ("1e-3", "3e-3", "1e-2"), "finetune": ("1e-5", "3e-5", "1e-4")}
REST_SEEDS = (1, 2)
CASCADE_ARCH = "lora"


@dataclass(frozen=True)
class Task:
    arch: str
    phase: int  # 1: seed 0 of a rate; 2: another seed at the kept rate; 3: that seed's cascade
    lr: str
    seed: int
    out: Path  # the run folder it ends with


def seed_run(root: Path, arch: str, lr: str, seed: int) -> Path:
    return root / f"{arch}-lr{lr}-seed{seed}"


def done(run: Path) -> bool:
    return (run / "summary.json").is_file()


def command(args, task: Task) -> list[str]:
    train = [args.pipeline, "--quiet", "train"]
    common = ["--seeds", str(task.seed), "--split", args.split, "--num-threads", str(args.threads), *args.train_flags]
    if task.phase < 3:
        return [*train, args.cache, "--arch", task.arch, "--out", str(task.out), "--lr", task.lr, *common]
    manifest = json.loads((Path(args.cache) / "manifest.json").read_text())
    model, cache = args.root / f"cascade-seed{task.seed}.model", args.root / f"cascade-seed{task.seed}.zarr"
    steps = []
    if not (model / "config.json").is_file():
        steps.append([args.pipeline, "--quiet", "export", str(seed_run(args.root, task.arch, task.lr, task.seed)), "--out", str(model)])
    steps.append([args.pipeline, "--quiet", "encode", str(manifest["graph_source"]), "--model", str(model), "--out", str(cache),
                  "--max-length", str(manifest["max_length"]), "--pooling", manifest["pooling"],
                  "--layers", ",".join(map(str, manifest["layers"])), "--storage-dtype", manifest["storage_dtype"]])
    steps.append([*train, str(cache), "--arch", "sage", "--out", str(task.out), *common])
    return ["bash", "-c", " && ".join(shlex.join(step) for step in steps)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache")
    ap.add_argument("root", type=Path)
    ap.add_argument("--split", default="random_60_20_20")
    ap.add_argument("--archs", default="lora,ia3,finetune")
    ap.add_argument("--cascade", action="store_true", help="also LoRA's export -> encode -> SAGE cascade, per seed")
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
    if args.cascade and CASCADE_ARCH not in archs:
        raise SystemExit(f"--cascade: the cascade tunes with {CASCADE_ARCH}; add it to --archs")
    args.root.mkdir(parents=True, exist_ok=True)

    pending: list[Task] = []
    running: dict[Task, subprocess.Popen] = {}
    failed = []

    def add(task: Task) -> None:
        if not done(task.out) and task not in running and task not in pending:
            pending.append(task)

    def follow_up(arch: str) -> None:
        """Enter the tasks that the finished ones allow: phase 2 after phase 1, the cascade after its seed."""
        runs = [seed_run(args.root, arch, lr, 0) for lr in GRID[arch]]
        if not all(done(r) for r in runs):
            return
        vals = {lr: float(json.loads((r / "summary.json").read_text())["val_acc_mean"]) for lr, r in zip(GRID[arch], runs)}
        best = max(GRID[arch], key=lambda lr: vals[lr])  # first of the grid on ties
        seeds = (0, *REST_SEEDS)
        for seed in REST_SEEDS:
            add(Task(arch, 2, best, seed, seed_run(args.root, arch, best, seed)))
        record = {"arch": arch, "lr": best, "seed0_val_acc": vals, "runs": [str(seed_run(args.root, arch, best, s)) for s in seeds]}
        (args.root / f"{arch}-best.json").write_text(json.dumps(record, indent=2) + "\n")
        if args.cascade and arch == CASCADE_ARCH:
            for seed in seeds:
                if done(seed_run(args.root, arch, best, seed)):
                    add(Task(arch, 3, best, seed, args.root / f"cascade-seed{seed}"))
            cascade = {**record, "cascade": "export -> encode -> sage", "runs": [str(args.root / f"cascade-seed{s}") for s in seeds]}
            (args.root / f"{arch}-cascade.json").write_text(json.dumps(cascade, indent=2) + "\n")

    for a in archs:
        for lr in GRID[a]:
            add(Task(a, 1, lr, 0, seed_run(args.root, a, lr, 0)))
        follow_up(a)
    while pending or running:
        pending.sort(key=lambda t: (archs.index(t.arch), t.phase, t.seed))
        for task in list(pending):
            if len(running) >= args.jobs:
                break
            pending.remove(task)
            print(f"{time.strftime('%H:%M:%S')} start {task.out.name}", flush=True)
            with open(task.out.with_name(task.out.name + ".log"), "a") as log:
                running[task] = subprocess.Popen(command(args, task), stdout=log, stderr=subprocess.STDOUT)
        time.sleep(5)
        for task, proc in list(running.items()):
            if proc.poll() is None:
                continue
            del running[task]
            print(f"{time.strftime('%H:%M:%S')} {task.out.name}: exit {proc.returncode}", flush=True)
            if proc.returncode != 0:
                lines = task.out.with_name(task.out.name + ".log").read_text(errors="replace").strip().splitlines()
                failed.append(f"{task.out.name} ({lines[-1] if lines else 'no output'})")
            else:
                follow_up(task.arch)
    for a in archs:
        if (args.root / f"{a}-best.json").is_file():
            record = json.loads((args.root / f"{a}-best.json").read_text())
            print(f"{a}: learning rate {record['lr']} (seed 0 validation {record['seed0_val_acc']}); row: {args.root / f'{a}-best.json'}")
    if failed:
        sys.exit("failed (see each one's .log beside it): " + "; ".join(failed))


if __name__ == "__main__":
    main()
