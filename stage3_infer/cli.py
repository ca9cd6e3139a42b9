"""``pipeline infer`` and ``pipeline bench infer``: the commands are generated from their config
dataclasses (pipeline/core/options.py), which declare every flag once.

Only light imports here (typer, the config dataclasses); torch and transformers load inside
``run`` so that ``pipeline --help`` stays fast.
"""

from __future__ import annotations

from pipeline.core.options import command
from stage3_infer.config import BenchConfig, InferConfig


def _infer(config: InferConfig) -> None:
    if config.status:
        import typer

        from pipeline.core.errors import EXIT_INCOMPLETE
        from stage3_infer.parts import status

        text, complete = status(config.out)
        typer.echo(text)
        if not complete:  # schedulers chain on the exit status, not the text
            raise typer.Exit(EXIT_INCOMPLETE)
        return
    if config.assemble:
        from pipeline.core.progress import log
        from stage3_infer.parts import assemble

        summary = assemble(config.out, config.overwrite)
        log(f"infer: {summary['parts']} parts, {summary['num_targets']} node(s) assembled -> {config.out}")
        return
    from stage3_infer.run import run

    run(config)


def _bench(config: BenchConfig) -> None:
    from stage3_infer.bench import run_bench

    run_bench(config)


infer_command = command(InferConfig, _infer, """Predict node labels with dynamic early exit: each target's text runs through the LLM only
    until its exit policy fires (default: the one the training run chose on its validation nodes; the output says which); a fine-tuning run's tuned LLM predicts at full depth. Writes predictions.parquet
    (node_id, predicted_label, confidence, exit_rung, exit_layer, true_label; the graph's
    fingerprint in its metadata) and summary.json. `--shard I/N` (or `auto`: the SLURM array task or torchrun rank) predicts part I of N into
    OUT.parts/ (a rerun skips finished parts), `--status` lists the missing parts (exit 0 all
    done, 3 not), `--assemble` joins them into OUT, equal to one process's output.""")

bench_infer_command = command(BenchConfig, _bench, """Early-exit benchmark on the test nodes, texts re-encoded by the LLM: accuracy, relative
    drop and wall-time speed-up against full depth (none), and the fraction of LLM layers run,
    for none, patience:1, patience:2, two confidence thresholds chosen on validation nodes and the run's stored
    policy (what `pipeline infer` runs without --exit).""")
