"""Peak RSS of each torchrun rank of `pipeline train` against one process, side by side.

    python scripts/bench_rank_rss.py CACHE --work DIR [--ranks 2] [--json F] [-- TRAIN_ARGS...]

Runs `pipeline train CACHE --out DIR/one-process TRAIN_ARGS` in one process, then
`torchrun --nproc-per-node RANKS -m pipeline train CACHE --out DIR/ranks-RANKS TRAIN_ARGS`,
and samples every process of each job tree every 0.2 s for its peak resident set (the
kernel's ``VmHWM``, so a peak between two samples is still seen). A rank is told apart by
the ``RANK`` in its environment. Prints per process: peak RSS in MiB, the ratio to the
one-process peak, and the sum over the ranks; each job runs with one torch thread per
process (``OMP_NUM_THREADS=1``, ``--num-threads 1``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
MIB = 1024 * 1024


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc/*/stat's parent field)."""
    parent = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        found += kids
        frontier += kids
    return found


def peak_and_rank(pid: int) -> tuple[int, str | None] | None:
    """(VmHWM in bytes, RANK or None) of a live `pipeline` process, else None (also when it
    exits while being read)."""
    try:
        if b"pipeline" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return None
        status = Path(f"/proc/{pid}/status").read_text()
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    hwm = next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:")), None)
    rank = next((e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"RANK=")), None)
    return (hwm, rank) if hwm else None


def watch(cmd: list[str], label: str) -> tuple[dict[str, int], list[str]]:
    """Run ``cmd``; the peak RSS of each python process in its tree, keyed by rank (or label),
    and the job's log lines that say how many cache rows each rank holds."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks: dict[int, tuple[int, str | None]] = {}
    while proc.poll() is None:
        for pid in [proc.pid, *children(proc.pid)]:
            seen = peak_and_rank(pid)
            if seen:
                peaks[pid] = max(peaks.get(pid, (0, None)), seen, key=lambda s: s[0])
        time.sleep(0.2)
    out = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-3000:]}")
    by_rank = {rank: hwm for hwm, rank in peaks.values() if rank is not None}
    if not by_rank:  # one process: the python process that ran the training
        by_rank = {label: max(hwm for hwm, _ in peaks.values())}
    return by_rank, [line for line in out.splitlines() if "cache rows" in line]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache", type=Path)
    ap.add_argument("--work", required=True, type=Path, help="folder for the two runs (created; must not exist)")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    a = ap.parse_args(argv[:cut])
    extra = argv[cut + 1:]  # after --: extra `pipeline train` flags
    if a.work.exists():
        raise SystemExit(f"--work {a.work}: exists; give a new folder (this script never replaces one)")
    a.work.mkdir(parents=True)
    train = ["-m", "pipeline", "train", str(a.cache), "--num-threads", "1", *extra]
    one = watch([sys.executable, *train, "--out", str(a.work / "one-process")], "one process")[0]["one process"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(a.ranks)]
    ranks, held = watch([*torchrun, *train, "--out", str(a.work / f"ranks-{a.ranks}")], "rank")
    print("| process | peak RSS (MiB) | / one process |")
    print("|---|---|---|")
    print(f"| one process | {one / MIB:,.0f} | 1.00 |")
    for rank in sorted(ranks, key=int):
        print(f"| rank {rank} of {a.ranks} | {ranks[rank] / MIB:,.0f} | {ranks[rank] / one:.2f} |")
    total = sum(ranks.values())
    print(f"| all {a.ranks} ranks | {total / MIB:,.0f} | {total / one:.2f} |")
    print("\n".join(held))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"cache": str(a.cache), "train_args": extra, "one_process_bytes": one,
                                      "rank_bytes": {r: ranks[r] for r in sorted(ranks, key=int)}, "rows_held": held},
                                     indent=2) + "\n")


if __name__ == "__main__":
    main()
