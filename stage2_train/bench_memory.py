"""``pipeline bench train-memory``: one training epoch from an in-memory cache vs out of core.

Each mode runs in its own child process, so each peak RSS is that mode's alone. A child opens
the cache's graph, builds the sampler and the ladder, runs a few small training steps (8 targets)
and a small evaluation batch on zero states with a copy of the ladder (warm-up), then records its
RSS (the *baseline*: Python, torch, the graph, the model; not the working set of full-size steps,
which out of core counts against the budget), resets the kernel's peak-RSS mark (``clear_refs``),
loads features (in-memory: the whole rung array; out of core: nothing up front), times
``--epochs`` training epochs and one validation pass, and reports its peak RSS. Both modes
train the same model from the same seed; batch orders differ (in-memory: a full shuffle, as
``pipeline train``; out of core: chunk-grouped), so losses are close, not equal.

Within budget means: peak RSS <= baseline + budget + model (weights, gradients and AdamW's
two moments, 4 x 4 bytes a parameter). The budget covers the chunk cache and the training
step's working set (micro-batches, :mod:`stage2_train.step_memory`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.core.bench_json import claim_bench, write_bench
from pipeline.core.errors import InputError, PipelineError
from pipeline.core.options import argument, json_option, option, seed_option
from pipeline.core.parsers import format_size, parse_size
from pipeline.core.progress import log
from stage2_train.config import EGO_FANOUT, EGO_HOPS, FANOUT_HELP, HOPS_HELP


WARM_UP_STEPS = 5
WARM_UP_TARGETS = 8  # small steps: the baseline holds torch's machinery, not a full-size step's buffers


@dataclass
class MemoryBenchConfig:
    cache: Path = argument(
        help="Cache folder written by `pipeline encode`; its rungs should exceed --memory-budget.", metavar="CACHE_DIR"
    )
    memory_budget: int = option(
        help="Budget of the out-of-core run, e.g. 128MB or 1GiB (smaller than the cache's rungs).", parse=parse_size, metavar="SIZE"
    )
    epochs: int = option(1, "Training epochs timed in each mode.")
    batch_size: int = option(64, "Target nodes per batch.")
    seed: int = seed_option(0, "Seed of the model, split and sampling (the same in both modes).")
    hops: int = option(EGO_HOPS, HOPS_HELP)
    fanout: int = option(EGO_FANOUT, FANOUT_HELP)
    readahead: int = option(1, "Micro-batches the out-of-core reader prepares ahead (0: none).")
    num_threads: int = option(1, "Torch CPU threads of each child.")
    json_path: Path | None = json_option()

    def validate(self) -> None:
        from pipeline.core.errors import ConfigErrors

        errs = ConfigErrors()
        errs.check(Path(self.cache).is_dir(), f"CACHE_DIR {self.cache}: no such cache; create it with `pipeline encode GRAPH --out {self.cache}`")
        errs.check(self.epochs > 0, f"--epochs {self.epochs}: must be > 0")
        errs.check(self.batch_size > 0, f"--batch-size {self.batch_size}: must be > 0")
        errs.check(1 <= self.hops <= 3, f"--hops {self.hops}: must be 1..3")
        errs.check(self.fanout >= 0, f"--fanout {self.fanout}: must be >= 0 (0 keeps every neighbour)")
        errs.check(self.readahead >= 0, f"--readahead {self.readahead}: must be >= 0")
        errs.check(self.num_threads > 0, f"--num-threads {self.num_threads}: must be > 0")
        errs.raise_if_any()


def _rss() -> dict:
    """Current and peak resident set size of this process, bytes (Linux /proc)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _warm_up(model, sampler, train, labels, val_targets, num_rungs: int, hidden_size: int, tc) -> None:
    """Small training steps and a small evaluation batch on zero states with a throwaway copy of
    the model, so the baseline RSS holds what any run allocates once (torch's lazy setup)."""
    import copy

    import torch

    from stage2_train.loop import optimise_step
    from stage2_train.sampling import generator

    twin = copy.deepcopy(model)
    opt = torch.optim.AdamW(twin.parameters(), lr=tc.lr)
    gen = generator(12345)
    for k in range(WARM_UP_STEPS):
        targets = train[k * WARM_UP_TARGETS : (k + 1) * WARM_UP_TARGETS]
        sub = sampler.sample(targets, gen)
        optimise_step(twin, opt, sub, torch.zeros(len(sub.nodes), num_rungs, hidden_size), labels[targets],
                      torch.ones(num_rungs), "cpu")
    twin.eval()
    with torch.no_grad():
        sub = sampler.sample(val_targets[:WARM_UP_TARGETS])
        twin(torch.zeros(len(sub.nodes), num_rungs, hidden_size), sub)


def child(mode: str, cfg: MemoryBenchConfig) -> dict:
    """One mode, in this process: baseline RSS, features, timed epochs, a validation pass, peak RSS."""
    import contextlib

    import numpy as np
    import torch

    from stage2_train.checkpoint import build_model
    from stage2_train.config import TrainConfig
    from stage2_train.data import CachedFeatures, open_train_data, resolve_split
    from stage2_train.loop import accumulate_step, epoch_batches, evaluate, make_eval_set, seed_everything
    from stage2_train.out_of_core import OutOfCoreFeatures
    from stage2_train.run import model_spec
    from stage2_train.sampling import Sampler, generator
    from stage2_train.step_memory import step_cost

    torch.set_num_threads(cfg.num_threads)
    data = open_train_data(cfg.cache, None, None, "ladder")
    tc = TrainConfig(cache=cfg.cache, out=Path("unused"), batch_size=cfg.batch_size)
    graph, labels = data.graph, np.asarray(data.graph.labels)
    split = resolve_split(graph, None, cfg.seed)
    sampler = Sampler(graph.edge_index, graph.num_nodes, mode="ego", hops=cfg.hops, fanout=cfg.fanout)
    seed_everything(cfg.seed)
    spec = model_spec(tc, data.reader.hidden_size, graph.num_classes, len(data.layers))
    model = build_model(spec)
    params = sum(p.numel() for p in model.parameters())
    val_set = make_eval_set(sampler, split["val"], labels, tc.eval_batch_size)
    _warm_up(model, sampler, split["train"], labels, split["val"], len(data.layers), data.reader.hidden_size, tc)
    baseline = _rss()
    reset = _reset_peak()

    t0 = time.perf_counter()
    if mode == "in-memory":
        features = CachedFeatures(data, limit=1 << 62)
    else:
        features = OutOfCoreFeatures(data, cfg.memory_budget, cfg.readahead, step_cost(spec))
        features.check(sampler, np.concatenate([split["train"], split["val"]]))
    load_s = time.perf_counter() - t0
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    weights = torch.ones(len(data.layers))
    gen = generator(cfg.seed)
    epoch_s, losses = [], []
    for _ in range(cfg.epochs):
        model.train()
        t0, total, n = time.perf_counter(), 0.0, 0
        with contextlib.closing(epoch_batches(features, sampler, split["train"], cfg.batch_size, gen)) as it:
            for piece in it:
                loss = accumulate_step(model, opt, piece, labels, weights, "cpu")
                total, n = total + loss * len(piece.targets), n + len(piece.targets)
        epoch_s.append(time.perf_counter() - t0)
        losses.append(total / max(n, 1))
    t0 = time.perf_counter()
    val = evaluate(model, features, val_set, "cpu")
    eval_s = time.perf_counter() - t0
    end = _rss()
    result = {
        "mode": mode, "load_s": load_s, "epoch_s": float(np.mean(epoch_s)), "epoch_s_each": epoch_s, "eval_s": eval_s,
        "loss_per_epoch": losses, "val_acc": val[-1], "train_targets": int(len(split["train"])),
        "batches_per_epoch": -(-len(split["train"]) // cfg.batch_size), "baseline_rss": baseline["VmRSS"],
        "baseline_peak_rss": baseline["VmHWM"], "peak_rss": end["VmHWM"], "peak_reset": reset,
        "model_params": params, "model_bytes": 16 * params,
    }
    if mode == "out-of-core":
        result |= {"lru_capacity": features.lru.capacity, "step_limit": features.step_limit, "micro_batches": features.micro_batches, "lru_hits": features.lru.hits, "lru_misses": features.lru.misses,
                   "chunks_read": features.chunks_read, "rows_read": features.rows_read}
    return result


def run_bench_memory(cfg: MemoryBenchConfig) -> dict:
    """Both modes, each in a child process; prints and returns the comparison."""
    from stage1_encode.cache.reader import open_cache

    cfg.validate()
    if cfg.json_path:
        claim_bench(cfg.json_path, "train-memory", inputs=[cfg.cache])
    reader = open_cache(cfg.cache)
    reader.check_complete()
    n, s, h = reader.shape
    rungs_bytes = n * s * h * reader.dtype.itemsize  # as held in memory (int8 caches dequantized)
    if cfg.memory_budget >= rungs_bytes:
        raise InputError(f"--memory-budget {format_size(cfg.memory_budget)}: the cache's rungs ({format_size(rungs_bytes)}) fit in it; "
                         "give a smaller budget to compare out of core with in memory")
    runs = {}
    for mode in ("in-memory", "out-of-core"):
        log(f"bench train-memory: {mode} ({cfg.epochs} epoch(s)) in a child process ...")
        env = {**os.environ, "OMP_NUM_THREADS": str(cfg.num_threads)}
        payload = json.dumps({"mode": mode, "cfg": {**asdict(cfg), "cache": str(cfg.cache), "json_path": None}})
        proc = subprocess.run([sys.executable, "-m", "stage2_train.bench_memory", payload], capture_output=True, text=True, env=env)
        if proc.returncode == InputError.exit_code:  # the child refused the input: its one-line message
            raise InputError(proc.stderr.strip().splitlines()[-1])
        if proc.returncode != 0:
            raise PipelineError(f"bench train-memory: the {mode} child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        runs[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    mem, ooc = runs["in-memory"], runs["out-of-core"]
    allowance = ooc["baseline_rss"] + cfg.memory_budget + ooc["model_bytes"]
    result = {
        "cache": str(cfg.cache), "num_nodes": n, "rungs": s, "hidden_size": h, "rungs_bytes": rungs_bytes,
        "memory_budget": cfg.memory_budget, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "hops": cfg.hops, "fanout": cfg.fanout,
        "readahead": cfg.readahead,
        "num_threads": cfg.num_threads, "in_memory": mem, "out_of_core": ooc,
        "epoch_ratio": ooc["epoch_s"] / mem["epoch_s"], "epoch_ratio_target": 1.5,
        "ooc_peak_over_baseline": ooc["peak_rss"] - ooc["baseline_rss"],
        "ooc_peak_allowance": allowance, "ooc_within_budget": ooc["peak_rss"] <= allowance,
    }
    _print(result)
    if cfg.json_path:
        write_bench(cfg.json_path, "train-memory", result)
    return result


def _print(r: dict) -> None:
    mb = lambda b: f"{b / 2**20:8.1f} MiB"  # noqa: E731
    print(f"bench train-memory {r['cache']}: {r['num_nodes']} nodes x {r['rungs']} rungs x {r['hidden_size']} fp16 = "
          f"{format_size(r['rungs_bytes'])}, budget {format_size(r['memory_budget'])}, {r['epochs']} epoch(s), "
          f"{r['in_memory']['batches_per_epoch']} batches of {r['batch_size']}, {r['hops']}-hop ego, fanout {r['fanout'] or 'all'}, "
          f"{r['num_threads']} thread(s)")
    print(f"  {'mode':12s} {'load s':>8s} {'epoch s':>9s} {'val pass s':>10s} {'baseline RSS':>14s} {'peak RSS':>14s} {'peak - base':>14s}")
    for key in ("in_memory", "out_of_core"):
        m = r[key]
        print(f"  {m['mode']:12s} {m['load_s']:8.2f} {m['epoch_s']:9.2f} {m['eval_s']:10.2f} {mb(m['baseline_rss']):>14s} "
              f"{mb(m['peak_rss']):>14s} {mb(m['peak_rss'] - m['baseline_rss']):>14s}")
    o = r["out_of_core"]
    print(f"  out of core / in memory epoch time {r['epoch_ratio']:.2f}x (target <= 1.5x); chunk cache hits "
          f"{o['lru_hits']}, misses {o['lru_misses']}, chunks read {o['chunks_read']}, single rows read {o['rows_read']}; "
          f"{o['micro_batches']} micro-batches of at most {mb(o['step_limit']).strip()} step memory")
    print(f"  out-of-core peak RSS {mb(o['peak_rss']).strip()} <= baseline {mb(o['baseline_rss']).strip()} + budget "
          f"{mb(r['memory_budget']).strip()} + model {mb(o['model_bytes']).strip()} = {mb(r['ooc_peak_allowance']).strip()}: "
          f"{'yes' if r['ooc_within_budget'] else 'NO'}")


if __name__ == "__main__":  # the child: python -m stage2_train.bench_memory '{"mode": ..., "cfg": {...}}'
    args = json.loads(sys.argv[1])
    c = args["cfg"]
    try:
        print(json.dumps(child(args["mode"], MemoryBenchConfig(**{**c, "cache": Path(c["cache"])}))))
    except PipelineError as err:
        print(err.format_message(), file=sys.stderr)
        sys.exit(err.exit_code)
