"""Incremental encode against a full re-encode, measured side by side in one run.

    python scripts/bench_incremental.py GRAPH WORK [--model M] [--max-length 32] [--added 0.02] [--edited 0.01] [--json PATH]

Makes two versions of GRAPH with ``scripts/make_graph_versions.py`` (v2 = v1 + ``--added`` of
the nodes, ``--edited`` of the texts revised), encodes v1 (the previous night's cache), then
times, each as its own ``pipeline encode`` process (start-up, graph load and model load
included, as a cron job pays them):

- full:        ``pipeline encode v2 --out full.zarr`` (``--extrapolate-full``: v1's full encode
               time scaled by the node counts instead, for graphs where a third full encode is too long)
- incremental: ``pipeline encode v2 --out incremental.zarr --reuse v1.zarr``

and prints wall times, LLM tokens (from each run's summary line), the tokens the new and
edited texts hold (tokenized here), the ratios, and whether both caches are equal bit for bit
(states, node ids, text hashes, manifest). The incremental update runs before the full
re-encode, so its figure comes first on a long run. A WORK left by an interrupted run is
picked up again: the versions are kept (they depend only on GRAPH and the seed) and the v1
encode resumes (it is not a figure); the two timed encodes always start from nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from make_graph_versions import make_versions  # noqa: E402

from stage1_encode.cache.manifest import read_manifest  # noqa: E402


def encode(args: list[str], log: Path) -> tuple[float, int]:
    """Run ``pipeline encode ARGS``; (wall seconds, LLM tokens from its summary line)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "encode", *args], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"pipeline encode {' '.join(args)} failed ({proc.returncode}); see {log}")
    tokens = re.findall(r"(\d+) LLM tokens", proc.stderr)
    return seconds, int(tokens[-1]) if tokens else 0


def same_cache(a: Path, b: Path) -> bool:
    """Equal states, node ids and text hashes (bytes) and equal manifests."""
    import zarr

    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    arrays = all(np.array_equal(np.asarray(ga[k][:]), np.asarray(gb[k][:])) and ga[k].dtype == gb[k].dtype
                 for k in ("states", "node_ids", "text_hashes"))
    return arrays and read_manifest(a) == read_manifest(b)


def changed_tokens(v1: Path, v2: Path, model: str, max_length: int) -> tuple[int, int, int]:
    """(tokens the new and edited texts of v2 hold, new nodes, edited texts), truncated to ``max_length``."""
    from pipeline.core.graph import load_graph
    from stage1_encode.models import resolve_model
    from stage1_encode.text_clip import token_ids
    from transformers import AutoTokenizer

    old, new = load_graph(v1), load_graph(v2)
    before = dict(zip(old.node_ids.tolist(), old.texts))
    texts = list(new.texts)
    added = [t for i, t in zip(new.node_ids.tolist(), texts) if i not in before]
    edited = [t for i, t in zip(new.node_ids.tolist(), texts) if i in before and before[i] != t]
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(model).path)
    return sum(len(r) for r in token_ids(tokenizer, added + edited, max_length)), len(added), len(edited)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("graph")
    p.add_argument("work", type=Path)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument("--added", type=float, default=0.02)
    p.add_argument("--edited", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--extrapolate-full", action="store_true",
                   help="skip the full re-encode of v2: its time is v1's full encode scaled by the node counts "
                        "(printed as extrapolated; bit-identity is then not checked)")
    a = p.parse_args()
    work = a.work
    if (work / "v1").is_dir() and (work / "v2").is_dir():
        v1, v2 = work / "v1", work / "v2"
    else:
        v1, v2 = make_versions(a.graph, work, a.added, a.edited, a.seed)
    flags = ["--model", a.model, "--max-length", str(a.max_length)]
    old_s, old_tokens = encode([str(v1), "--out", str(work / "v1.zarr"), *flags], work / "v1.log")
    print(f"v1 encoded in {old_s:.1f}s ({old_tokens} LLM tokens)", flush=True)
    for name in ("incremental.zarr", "full.zarr"):  # the timed runs always start from nothing
        shutil.rmtree(work / name, ignore_errors=True)
    inc_s, inc_tokens = encode([str(v2), "--out", str(work / "incremental.zarr"), "--reuse", str(work / "v1.zarr"), *flags],
                               work / "incremental.log")
    print(f"incremental update of v2: {inc_s:.1f}s, {inc_tokens} LLM tokens", flush=True)
    from pipeline.core.graph import load_graph

    n1, n2 = load_graph(v1).num_nodes, load_graph(v2).num_nodes
    if a.extrapolate_full:
        full_s, full_tokens = old_s * n2 / n1, round(old_tokens * n2 / n1)
        print(f"full re-encode of v2 (extrapolated from v1's {n1} nodes to {n2}): {full_s:.1f}s, ~{full_tokens} LLM tokens", flush=True)
    else:
        full_s, full_tokens = encode([str(v2), "--out", str(work / "full.zarr"), *flags], work / "full.log")
        print(f"full re-encode of v2: {full_s:.1f}s, {full_tokens} LLM tokens", flush=True)
    held, n_added, n_edited = changed_tokens(v1, v2, a.model, a.max_length)
    figures = {
        "graph": a.graph, "model": a.model, "max_length": a.max_length, "added_nodes": n_added, "edited_texts": n_edited,
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "v1_encode_s": round(old_s, 2), "full_s": round(full_s, 2), "incremental_s": round(inc_s, 2),
        "time_ratio": round(inc_s / full_s, 4), "full_tokens": full_tokens, "incremental_tokens": inc_tokens,
        "changed_texts_tokens": held, "token_ratio": round(inc_tokens / max(full_tokens, 1), 4),
        "full_extrapolated": a.extrapolate_full, "v1_nodes": n1, "v2_nodes": n2,
        "bit_identical": None if a.extrapolate_full else same_cache(work / "full.zarr", work / "incremental.zarr"),
    }
    print(json.dumps(figures, indent=2))
    print(
        f"incremental/full wall time {figures['time_ratio']:.3f} (target <= 0.1), LLM tokens {inc_tokens} "
        f"(new and edited texts hold {held}; target: no more), bit-identical: {figures['bit_identical']}"
    )
    if a.json:
        a.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
