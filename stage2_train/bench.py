"""``pipeline bench train``: what the cache buys (epoch time with and without it) and accuracy.

One run: (1) a cache of GRAPH (reused with ``--cache``, else encoded into ``--out``);
(2) one ladder training epoch timed from the cache and with the frozen LLM in the loop, on
the same batches, subgraphs and initial weights (the uncached epoch is timed over
``--max-batches-uncached`` batches and extrapolated, which the output says); (3) the
ladder and the mlp/gcn/sage baselines trained on the cache with the same seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.core import ownership
from pipeline.core.bench_json import claim_bench, write_bench
from pipeline.core.errors import InputError
from pipeline.core.options import argument, device_option, json_option, option, out_option, seeds_option
from pipeline.core.progress import log
from stage1_encode.config import model_option



BASELINE_ARCHS = ("mlp", "gcn", "sage")


def _zero_is_none(value: int, flag: str) -> int | None:
    return value or None


@dataclass
class BenchConfig:
    graph: str = argument(help="Built-in dataset name or graph folder.", metavar="GRAPH")
    model: str | None = model_option(None, "Encoder model (built-in name, HF id or folder); default: stage 1's default.")
    cache: Path | None = option(None, "Reuse this cache of GRAPH instead of encoding one (must match --model).")
    epochs_uncached: int = option(1, "Uncached epochs to time.")
    max_batches_uncached: int | None = option(
        8, "Time only this many uncached batches and extrapolate to a full epoch (0: whole epoch).", parse=_zero_is_none, unparse=lambda v: v or 0, cli_type=int
    )
    epochs: int = option(200, "Maximum epochs of the accuracy runs.")
    seeds: tuple[int, ...] = seeds_option((0,), "Seeds of the accuracy runs.")
    out: Path = out_option("the bench's runs (replaced)", Path("artifacts/bench/train"))
    json_path: Path | None = json_option()
    num_threads: int | None = option(None, "Torch CPU threads (default: torch's).")
    device: str = device_option()


def _encode(graph: str, model: str | None, path: Path, device: str) -> Path:
    """Encode GRAPH with stage 1 (default layers, pooling) into ``path``."""
    from stage1_encode.config import EncodeConfig
    from stage1_encode.run import run as encode

    kwargs = {"graph": graph, "out": path, "device": device}
    if model:
        kwargs["model"] = model
    encode(EncodeConfig(**kwargs))
    return path


def run_bench(cfg: BenchConfig) -> dict:
    import numpy as np

    from stage2_train.checkpoint import build_model
    from stage2_train.config import TrainConfig
    from stage2_train.data import CachedFeatures, LiveFeatures, open_train_data, resolve_split
    from stage2_train.loop import seed_everything, time_epoch
    from stage2_train.run import model_spec, run
    from stage2_train.sampling import Sampler

    if cfg.num_threads:
        import torch

        torch.set_num_threads(cfg.num_threads)
    from pipeline.core.devices import resolve_device
    from stage1_encode.precision import cache_compute_dtype

    if cfg.epochs_uncached < 1:
        raise InputError(f"--epochs-uncached {cfg.epochs_uncached}: must be >= 1")
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    # the bench's own folder (its cache and runs are reused or replaced); nothing else is
    if cfg.json_path:
        claim_bench(cfg.json_path, "train")
    inputs = [p for p in (cfg.cache, Path(cfg.graph)) if p is not None and Path(p).exists()]
    if not ownership.claim_output(out, "bench", "--out", resume=True, inputs=inputs):
        out.mkdir(parents=True, exist_ok=True)
        ownership.write_marker(out, "bench")
    cache = Path(cfg.cache) if cfg.cache else _encode(cfg.graph, cfg.model, out / "cache.zarr", device)
    data = open_train_data(cache, None, None, "ladder")
    if cfg.cache and data.manifest.get("graph_source") not in (cfg.graph, str(Path(cfg.graph).resolve())):
        raise InputError(f"--cache {cache}: encodes graph '{data.manifest.get('graph_source')}', not '{cfg.graph}'")
    seed = cfg.seeds[0]
    base = TrainConfig(cache=cache, out=out / "runs" / "ladder", seeds=cfg.seeds, epochs=cfg.epochs, overwrite=True, device=device)
    graph, labels = data.graph, np.asarray(data.graph.labels)
    split = resolve_split(graph, base.split, seed)
    sampler = Sampler(graph.edge_index, graph.num_nodes, mode=base.resolved_sampler, hops=base.hops, fanout=base.fanout)
    spec = model_spec(base, data.reader.hidden_size, graph.num_classes, len(data.layers))

    def timed(features, max_batches):
        runs = []
        for _ in range(cfg.epochs_uncached if max_batches else 1):
            seed_everything(seed)
            runs.append(time_epoch(build_model(spec), features, sampler, split["train"], labels, base, seed, max_batches))
        return runs[-1] | {"epoch_s": float(np.mean([r["epoch_s"] for r in runs]))}

    log("timing a cached epoch ...")
    cached = timed(CachedFeatures(data), None)
    log(f"cached: {cached['epoch_s']:.2f}s per epoch ({cached['batches_per_epoch']} batches)")
    log("timing the LLM in the loop (--no-cache) ...")
    dtype = cache_compute_dtype(data.manifest, None, False, str(cache))  # the LLM in the cache's precision
    uncached = timed(LiveFeatures(data, device, dtype), cfg.max_batches_uncached or None)
    how = (f"extrapolated from {uncached['batches_timed']} of {uncached['batches_per_epoch']} batches"
           if uncached["extrapolated"] else "a whole epoch")
    log(f"uncached: {uncached['epoch_s']:.1f}s per epoch ({how})")

    accs = {}
    for arch in ("ladder",) + BASELINE_ARCHS:
        run_cfg = TrainConfig(cache=cache, out=out / "runs" / arch, arch=arch, seeds=cfg.seeds, epochs=cfg.epochs, overwrite=True,
                              num_threads=cfg.num_threads, device=device)
        s = run(run_cfg)
        accs[arch] = {k: s[k] for k in ("test_acc_mean", "test_acc_std", "val_acc_mean")}
    result = {
        "graph": cfg.graph,
        "cache": str(cache),
        "model": data.manifest.get("model"),
        "layers": data.layers,
        "device": device,
        "compute_dtype": dtype,
        "epoch_s_cached": cached["epoch_s"],
        "epoch_s_uncached": uncached["epoch_s"],
        "caching_speedup": uncached["epoch_s"] / cached["epoch_s"],
        "uncached_extrapolated": uncached["extrapolated"],
        "uncached_batches_timed": uncached["batches_timed"],
        "batches_per_epoch": cached["batches_per_epoch"],
        "first_batch_loss_cached": cached["losses"][0],
        "first_batch_loss_uncached": uncached["losses"][0],
        "seeds": list(cfg.seeds),
        "accuracy": accs,
        **{f"{a}_test_acc_mean": v["test_acc_mean"] for a, v in accs.items()},
        **{f"{a}_test_acc_std": v["test_acc_std"] for a, v in accs.items()},
    }
    _print(result, how)
    if cfg.json_path:
        write_bench(cfg.json_path, "train", result)
    return result


def _print(r: dict, how: str) -> None:
    print(f"bench train {r['graph']} (model {r['model']}, rungs {r['layers']}, seeds {r['seeds']})")
    print(f"  epoch from cache      {r['epoch_s_cached']:10.2f} s  ({r['batches_per_epoch']} batches)")
    print(f"  epoch with LLM inside {r['epoch_s_uncached']:10.2f} s  ({how})")
    print(f"  caching speedup       {r['caching_speedup']:10.1f} x  (paper: 12x; target >= 20x)")
    print(f"  first-batch loss      cached {r['first_batch_loss_cached']:.5f}  uncached {r['first_batch_loss_uncached']:.5f}")
    for arch, a in r["accuracy"].items():
        print(f"  {arch:7s} test acc {100 * a['test_acc_mean']:6.2f} ± {100 * a['test_acc_std']:.2f}   val {100 * a['val_acc_mean']:.2f}")
