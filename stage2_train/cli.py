"""``pipeline train``, ``pipeline bench train`` and ``bench train-memory``: the commands are
generated from their config dataclasses (pipeline/core/options.py), which declare every flag once.

Only light imports here (typer, the config dataclasses) so that ``pipeline --help`` is fast.
"""

from __future__ import annotations

from pipeline.core.options import command, help_by_choice
from stage2_train.bench import BenchConfig
from stage2_train.bench_memory import MemoryBenchConfig
from stage2_train.config import TrainConfig, arch_panels, train_cli_classes
from stage2_train.export import ExportConfig


def _train(config: TrainConfig) -> None:
    from stage2_train.run import run

    run(config)


def _export(config: ExportConfig) -> None:
    from stage2_train.export import run_export

    run_export(config)


def _bench(config: BenchConfig) -> None:
    from stage2_train.bench import run_bench

    run_bench(config)


def _bench_memory(config: MemoryBenchConfig) -> None:
    from stage2_train.bench_memory import run_bench_memory

    run_bench_memory(config)


train_command = command(TrainConfig, _train, """Train the G-Ladder (or a baseline, or a fine-tuning baseline) from an encode cache; one model per seed.

    Writes RUN_DIR with safetensors weights per seed (for lora/ia3/prefix the adapter and head only; the base weights are never changed), the resolved config, a copy of the cache manifest, metrics.jsonl (per epoch) and summary.json (mean ± std over seeds, every head's accuracy, gate values, and the cost ledger: trainable and backward-touched parameters, peak training memory, seconds per epoch, epochs, training and encode wall time). `pipeline infer --checkpoint RUN_DIR` needs only RUN_DIR; `pipeline export RUN_DIR --out MODEL_DIR` writes a fine-tuning run's tuned LLM for `pipeline encode --model MODEL_DIR`.

    On several processes: `torchrun --nproc-per-node N -m pipeline train ...` (gloo on CPU, nccl with --device cuda); each rank trains on its share of the targets and reads only their cache rows, rank 0 writes RUN_DIR (docs/scale.md).

    A flag outside the panels of the chosen --arch (Common and Scale hold every arch's) is refused; `pipeline train --arch ARCH --help` lists only that arch's panels.
    """, variants=train_cli_classes()[1:])
train_help_command = help_by_choice("--arch", arch_panels)  # `train --arch gcn --help`: gcn's panels only

export_command = command(ExportConfig, _export, """Write a fine-tuning run's tuned LLM (LoRA/IA3 merged into the base weights) as an HF folder that `pipeline encode --model MODEL_DIR` accepts: export -> encode -> train --arch sage is the SimTeG/GLEM cascade. Only training nodes' labels reached the tuned weights; validation labels chose the epoch. Prefix runs have no weights to merge and are refused.""")

bench_train_command = command(BenchConfig, _bench, """Time a training epoch from the cache against one with the LLM in the loop; report accuracies.

    Prints epoch_s_cached, epoch_s_uncached (extrapolated from --max-batches-uncached batches when set, and says so), caching_speedup, and the test accuracy of the ladder and of the mlp/gcn/sage baselines on the same cache.
    """)

bench_train_memory_command = command(MemoryBenchConfig, _bench_memory, """Time training epochs with the cache in memory and out of core (--memory-budget); compare peak RSS.

    Each mode runs in its own child process. Prints load, epoch and validation-pass times, baseline RSS (Python, torch, graph, model; before any features or full-size step), peak RSS, the epoch-time ratio (target <= 1.5x) and whether the out-of-core peak RSS stays within baseline + budget + model.
    """)
