"""What the resumable training state costs and what a resume takes (docs/scale.md).

    python scripts/bench_resume.py CACHE [--seeds 0,1] [--epochs 20] [MORE TRAIN FLAGS]

Runs ``pipeline train CACHE`` three ways, one after the other, in fresh processes:

1. the state written only after each seed (``--state-every 1e9``): the baseline epoch time;
2. the state written after every epoch (``--state-every 0``): the worst case of the overhead;
3. like 2, SIGKILLed after the first batch of the middle epoch of the last seed (the test hook
   ``PIPELINE_TEST_KILL_AT``), then the same command again: its wall time, and the time it
   took to read the state (its log line).

Prints mean epoch seconds of 1 and 2 (``cost.json``'s ``epoch_s_mean``) and their ratio,
the wall times, and whether the resumed run's weights equal run 2's bit for bit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def train(cache: str, out: Path, flags: list[str], **env: str) -> tuple[float, str, int]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "train", cache, "--out", str(out), *flags],
                          env={**os.environ, **env}, capture_output=True, text=True)
    return time.perf_counter() - t0, proc.stderr, proc.returncode


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cache")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--epochs", type=int, default=20)
    args, extra = p.parse_known_args()  # the rest: more `pipeline train` flags
    args.extra = [a for a in extra if a != "--"]
    seeds = [int(s) for s in args.seeds.split(",")]
    flags = ["--seeds", args.seeds, "--epochs", str(args.epochs), "--patience", str(args.epochs), *args.extra]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = {}
        for name, every in (("state after each seed", "1e9"), ("state after every epoch", "0")):
            wall, log, rc = train(args.cache, root / name.replace(" ", "_"), [*flags, "--state-every", every])
            assert rc == 0, log
            cost = json.loads((root / name.replace(" ", "_") / "cost.json").read_text())  # the measured entries
            rows[name] = (cost["epoch_s_mean"], wall)
            print(f"{name}: {cost['epoch_s_mean']:.4f} s/epoch, {wall:.1f} s wall", flush=True)
        (base, _), (every, full_wall) = rows.values()
        print(f"epoch time ratio (every epoch / after each seed): {every / base:.3f}")

        killed = root / "killed"
        point = f"seed {seeds[-1]} epoch {args.epochs // 2} batch 1"
        wall_killed, log, rc = train(args.cache, killed, [*flags, "--state-every", "0"], PIPELINE_TEST_KILL_AT=point)
        assert rc == -9, log
        wall, log, rc = train(args.cache, killed, [*flags, "--state-every", "0"])
        assert rc == 0, log
        read = re.search(r"resuming from .* \(read in ([0-9.]+)s\)", log)
        same = all((killed / f"seed_{s}/model.safetensors").read_bytes()
                   == (root / "state_after_every_epoch" / f"seed_{s}/model.safetensors").read_bytes() for s in seeds)
        print(f"killed at '{point}' after {wall_killed:.1f} s; the same command again: {wall:.1f} s wall "
              f"(state read in {read.group(1) if read else '?'} s; an uninterrupted run: {full_wall:.1f} s); "
              f"weights equal to the uninterrupted run's: {same}")


if __name__ == "__main__":
    main()
