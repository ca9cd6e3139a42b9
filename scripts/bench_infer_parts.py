"""Infer spread over N parts against one process: wall time per part, balance, equality.

    python scripts/bench_infer_parts.py --checkpoint RUN --work DIR --parts 1,2,4 [--split test] \\
        [--json bench/infer-parts.json]

For each N the parts `pipeline infer --shard I/N` run one after another (so each part's wall
time is its own, not shared with the others on a small machine), then `--assemble` joins
them. Prints, per N: targets and wall time of each part (and of its prediction loop, without
the process start-up), the balance (slowest part / mean part), the sum of part times against
the one-process time, and whether the assembled `predictions.parquet` equals the one-process
file byte for byte. Every command is a plain `pipeline infer` run in a child process with one
torch thread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from stage3_infer.parts import part_dir

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
PIPELINE = [sys.executable, "-m", "pipeline"]


def run(args: list[str]) -> float:
    start = time.perf_counter()
    res = subprocess.run([*PIPELINE, *args], env=ENV, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"pipeline {' '.join(args)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return time.perf_counter() - start


def targets_of(folder: Path) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(folder / "predictions.parquet").num_rows


def loop_s(folder: Path) -> float:
    """The prediction loop's own seconds (summary.json's wall_time_s): the process less its start-up."""
    return round(json.loads((folder / "summary.json").read_text())["wall_time_s"], 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, type=Path)
    ap.add_argument("--work", required=True, type=Path, help="folder for the predictions (created; must not exist)")
    ap.add_argument("--parts", default="1,2,4", help="part counts; 1 is the one-process run every other is compared with")
    ap.add_argument("--split", default="test")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    counts = sorted({int(n) for n in a.parts.split(",")} | {1})
    if a.work.exists():
        raise SystemExit(f"--work {a.work}: exists; give a new folder (this script never replaces one)")
    a.work.mkdir(parents=True)
    common = ["--quiet", "infer", "--checkpoint", str(a.checkpoint), "--split", a.split]
    one = a.work / "one-process"
    one_s = run([*common, "--out", str(one)])
    reference = (one / "predictions.parquet").read_bytes()
    rows = [{"parts": 1, "targets": [targets_of(one)], "part_s": [round(one_s, 2)], "loop_s": [loop_s(one)], "balance": 1.0,
             "sum_over_one": 1.0, "equal": True}]
    for n in counts[1:]:
        out = a.work / f"parts-{n}"
        part_s = [run([*common, "--out", str(out), "--shard", f"{i}/{n}"]) for i in range(n)]
        run([*common, "--out", str(out), "--assemble"])
        folders = [part_dir(out, i, n) for i in range(n)]
        rows.append({
            "parts": n, "targets": [targets_of(f) for f in folders], "part_s": [round(s, 2) for s in part_s],
            "loop_s": [loop_s(f) for f in folders],
            "balance": round(max(part_s) / (sum(part_s) / n), 3), "sum_over_one": round(sum(part_s) / one_s, 3),
            "equal": (out / "predictions.parquet").read_bytes() == reference,
        })
    print("| parts | targets per part | wall s per part | of which the prediction loop | slowest / mean part "
          "| sum of parts / one process | assembled = one process, byte for byte |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['parts']} | {', '.join(map(str, r['targets']))} | {', '.join(f'{s:.1f}' for s in r['part_s'])} | "
              f"{', '.join(f'{s:.1f}' for s in r['loop_s'])} | "
              f"{r['balance']:.3f} | {r['sum_over_one']:.3f} | {'yes' if r['equal'] else 'NO'} |")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"checkpoint": str(a.checkpoint), "split": a.split, "rows": rows}, indent=2) + "\n")
    if not all(r["equal"] for r in rows):
        raise SystemExit("assembled parts differ from the one-process run")


if __name__ == "__main__":
    main()
