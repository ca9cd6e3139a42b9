"""``pipeline train`` and ``pipeline bench train``: build the typed config and call ``run``.

Only light imports here (typer, the config dataclasses) so that ``pipeline --help`` is fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.config_file import ConfigOption
from stage2_train.config import TrainConfig, parse_float_list, parse_int_list, parse_size


def train_command(
    cache: Path = typer.Argument(..., metavar="CACHE_DIR", help="Cache folder written by `pipeline encode` (it names its graph)."),
    out: Path = typer.Option(..., "--out", help="Run folder to create: weights, config, metrics, summary."),
    arch: str = typer.Option("ladder", "--arch", help="ladder (G-Ladder over the cached rungs) or a baseline on one state: mlp, gcn, sage."),
    split: Optional[str] = typer.Option(
        None, "--split",
        help="column (the graph's split column; default when present), a split name (e.g. random_60_20_20, "
        "planetoid_public; NAME_seed{i} is used for seed i), or random:0.6,0.2,0.2. Default without a column: random_60_20_20.",
    ),
    seeds: str = typer.Option("0", "--seeds", help="Comma-separated seeds; one model per seed, mean ± std reported."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Run the frozen LLM inside the loop instead of reading the cache (slow; for comparison)."),
    rungs: Optional[str] = typer.Option(None, "--rungs", help="LLM state indices the ladder reads, e.g. 0,10,20,30 (default: every cached state)."),
    layer: Optional[int] = typer.Option(None, "--layer", help="The LLM state a baseline reads (default: the last cached state)."),
    hidden_channels: int = typer.Option(128, "--hidden-channels", help="Side width K."),
    gnn: str = typer.Option("sage", "--gnn", help="GNN of each rung: sage, gcn, gat."),
    num_layers: Optional[int] = typer.Option(None, "--num-layers", help="GNN layers per rung for the ladder (default 1), layers in total for a baseline (default 2)."),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="ego (the target's --hops neighbourhood; ladder default), rwr (random walk with restart), full (whole graph; baselines' default)."),
    fanout: Optional[int] = typer.Option(None, "--fanout", help="ego: keep at most this many neighbours per node and hop."),
    hops: int = typer.Option(1, "--hops", help="ego: neighbourhood radius in hops (1 = the reference's ego graph; 2 with --fanout 5 scored best on validation, docs/results.md)."),
    num_walks: int = typer.Option(8, "--num-walks", help="rwr: walks per target."),
    walk_length: int = typer.Option(8, "--walk-length", help="rwr: steps per walk."),
    restart_p: float = typer.Option(0.5, "--restart-p", help="rwr: restart probability per step."),
    epochs: int = typer.Option(200, "--epochs", help="Maximum epochs."),
    patience: int = typer.Option(30, "--patience", help="Stop after this many epochs without a better validation accuracy (last head)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="AdamW learning rate (default 3e-4 for the ladder, 1e-2 for the baselines)."),
    weight_decay: float = typer.Option(5e-4, "--weight-decay", help="AdamW weight decay."),
    dropout: float = typer.Option(0.5, "--dropout", help="Dropout probability."),
    temperature: float = typer.Option(0.1, "--temperature", help="Gate temperature T in sigmoid(a / T)."),
    loss: str = typer.Option(
        "multi-exit", "--loss",
        help="multi-exit: every rung's exit head is trained (ENGINE-Early; what early exit needs); last-head: only the "
        "last head's loss (plain ENGINE; the earlier heads stay untrained, so infer then runs full depth).",
    ),
    rung_weights: Optional[str] = typer.Option(None, "--rung-weights", help="--loss multi-exit: weight of each rung's head, comma-separated (default all 1)."),
    readout: str = typer.Option(
        "target-mean", "--readout",
        help="Ladder head input: target-mean ([z_v || mean of z over v's subgraph], the reference) or ego (also v's own "
        "projected LLM state, untouched by neighbours: for heterophilous graphs).",
    ),
    standardize: bool = typer.Option(
        False, "--standardize/--no-standardize",
        help="Z-score each LLM state with the mean and std of the training nodes (stored with the weights, applied by infer too).",
    ),
    batch_size: int = typer.Option(64, "--batch-size", help="Target nodes per training batch (ignored by --sampler full: full batch)."),
    device: str = typer.Option("cpu", "--device", help="Torch device, e.g. cpu or cuda."),
    num_threads: Optional[int] = typer.Option(
        None, "--num-threads", help="Torch CPU threads (default: torch's). The ladder's ops are small: on a busy machine 1 is much faster."
    ),
    memory_budget: Optional[str] = typer.Option(
        None, "--memory-budget",
        help="Memory for the cache's features, e.g. 512MB or 2GiB. When the used rungs (N x S x H x 2 bytes) exceed it, "
        "train out of core within it: chunk-ordered batches, a chunk cache of half the budget, batches cut into "
        "micro-batches (gradients accumulated) so the step's working set fits the other half, read-ahead. "
        "Default: 8 GiB or half the available memory, whichever is less.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
    dist_timeout: float = typer.Option(
        300.0, "--dist-timeout",
        help="Under torchrun: seconds to wait for the other ranks, when joining and at every collective, before failing.",
    ),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Train the G-Ladder (or a baseline) from an encode cache; one model per seed.

    Writes RUN_DIR with safetensors weights per seed, the resolved config, a copy of the cache manifest, metrics.jsonl (per epoch) and summary.json (mean ± std over seeds, every head's accuracy, gate values). `pipeline infer --checkpoint RUN_DIR` needs only RUN_DIR.

    On several processes: `torchrun --nproc-per-node N -m pipeline train ...` (gloo on CPU, nccl with --device cuda); each rank trains on its share of the targets and reads only their cache rows, rank 0 writes RUN_DIR (docs/scale.md).
    """
    from stage2_train.run import run

    cfg = TrainConfig(
        cache=cache, out=out, arch=arch, split=split, seeds=parse_int_list(seeds, "--seeds") or (),
        no_cache=no_cache, rungs=parse_int_list(rungs, "--rungs"), layer=layer, hidden_channels=hidden_channels,
        gnn=gnn, num_layers=num_layers, sampler=sampler, fanout=fanout, hops=hops,
        num_walks=num_walks, walk_length=walk_length, restart_p=restart_p, epochs=epochs, patience=patience, lr=lr,
        weight_decay=weight_decay, dropout=dropout, temperature=temperature,
        rung_weights=parse_float_list(rung_weights, "--rung-weights"), loss=loss, standardize=standardize, readout=readout,
        batch_size=batch_size, device=device,
        num_threads=num_threads, overwrite=overwrite, dist_timeout=dist_timeout,
        memory_budget=parse_size(memory_budget, "--memory-budget"),
    )
    run(cfg)


def bench_train_command(
    graph: str = typer.Argument(..., metavar="GRAPH", help="Built-in dataset name or graph folder."),
    model: Optional[str] = typer.Option(None, "--model", help="Encoder model (built-in name, HF id or folder); default: stage 1's default."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Reuse this cache of GRAPH instead of encoding one (must match --model)."),
    epochs_uncached: int = typer.Option(1, "--epochs-uncached", help="Uncached epochs to time."),
    max_batches_uncached: Optional[int] = typer.Option(
        8, "--max-batches-uncached", help="Time only this many uncached batches and extrapolate to a full epoch (0: whole epoch)."
    ),
    epochs: int = typer.Option(200, "--epochs", help="Maximum epochs of the accuracy runs."),
    seeds: str = typer.Option("0", "--seeds", help="Seeds of the accuracy runs."),
    out: Path = typer.Option(Path("artifacts/bench/train"), "--out", help="Folder for the bench's runs (replaced)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the figures as JSON to this file."),
    num_threads: Optional[int] = typer.Option(None, "--num-threads", help="Torch CPU threads (default: torch's)."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Time a training epoch from the cache against one with the LLM in the loop; report accuracies.

    Prints epoch_s_cached, epoch_s_uncached (extrapolated from --max-batches-uncached batches when set, and says so), caching_speedup, and the test accuracy of the ladder and of the mlp/gcn/sage baselines on the same cache.
    """
    from stage2_train.bench import BenchConfig, run_bench

    run_bench(
        BenchConfig(
            graph=graph, model=model, cache=cache, epochs_uncached=epochs_uncached,
            max_batches_uncached=max_batches_uncached or None, epochs=epochs,
            seeds=parse_int_list(seeds, "--seeds") or (0,), out=out, json_path=json_path, num_threads=num_threads,
        )
    )


def bench_train_memory_command(
    cache: Path = typer.Argument(..., metavar="CACHE_DIR", help="Cache folder written by `pipeline encode`; its rungs should exceed --memory-budget."),
    memory_budget: str = typer.Option(..., "--memory-budget", help="Budget of the out-of-core run, e.g. 128MB or 1GiB (smaller than the cache's rungs)."),
    epochs: int = typer.Option(1, "--epochs", help="Training epochs timed in each mode."),
    batch_size: int = typer.Option(64, "--batch-size", help="Target nodes per batch."),
    seed: int = typer.Option(0, "--seed", help="Seed of the model, split and sampling (the same in both modes)."),
    fanout: Optional[int] = typer.Option(None, "--fanout", help="Ego sampler: keep at most this many neighbours per node (default: all)."),
    readahead: int = typer.Option(1, "--readahead", help="Micro-batches the out-of-core reader prepares ahead (0: none)."),
    num_threads: int = typer.Option(1, "--num-threads", help="Torch CPU threads of each child."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the figures as JSON to this file."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Time training epochs with the cache in memory and out of core (--memory-budget); compare peak RSS.

    Each mode runs in its own child process. Prints load, epoch and validation-pass times, baseline RSS (Python, torch, graph, model; before any features or full-size step), peak RSS, the epoch-time ratio (target <= 1.5x) and whether the out-of-core peak RSS stays within baseline + budget + model.
    """
    from stage2_train.bench_memory import MemoryBenchConfig, run_bench_memory

    run_bench_memory(MemoryBenchConfig(
        cache=cache, memory_budget=parse_size(memory_budget, "--memory-budget"), epochs=epochs, batch_size=batch_size,
        seed=seed, fanout=fanout, readahead=readahead, num_threads=num_threads, json_path=json_path,
    ))
