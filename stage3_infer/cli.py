"""``pipeline infer`` and ``pipeline bench infer``: build the config, call ``run``.

Only light imports here (typer, the config dataclasses); torch and transformers load inside
``run`` so that ``pipeline --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.config_file import ConfigOption
from pipeline.errors import plain_errors


@plain_errors
def infer_command(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Training run folder written by `pipeline train`."),
    out: Path = typer.Option(..., "--out", help="Folder for predictions.parquet, summary.json and infer_config.json."),
    split: Optional[str] = typer.Option(None, "--split", help="Targets: test (default), val, train or all nodes of the checkpoint's graph."),
    node_ids: Optional[Path] = typer.Option(None, "--node-ids", help="Targets: a text file of node ids, one a line."),
    nodes: Optional[Path] = typer.Option(None, "--nodes", help="New nodes (node_id, text, optional label), never cached; they become the targets."),
    edges: Optional[Path] = typer.Option(None, "--edges", help="Edges (src, dst) of the new nodes, to each other or to known nodes."),
    exit: Optional[str] = typer.Option(
        None, "--exit",
        help="Exit policy: patience:P, confidence:T, layer:I or none (full depth). Default: the policy the run chose on its "
        "validation nodes when trained (the cheapest within 1% relative of full-depth accuracy).",
    ),
    batch_size: int = typer.Option(32, "--batch-size", help="Texts per LLM forward batch."),
    cache_neighbours: bool = typer.Option(True, "--cache-neighbours/--no-cache-neighbours", help="Known neighbours read their states from the cache (default) or run through the LLM too."),
    model: Optional[str] = typer.Option(None, "--model", help="LLM to load (default: the one in the checkpoint's cache manifest); must be the same model."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Trained seed to use (default: the one chosen on validation)."),
    device: str = typer.Option("cpu", "--device", help="Torch device, e.g. cpu or cuda."),
    max_targets: Optional[int] = typer.Option(None, "--max-targets", help="Predict only the first N targets (a quick look)."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Predict node labels with dynamic early exit: each target's text runs through the LLM only
    until its exit policy fires (default: the one the training run chose on its validation nodes; the output says which). Writes predictions.parquet
    (node_id, predicted_label, confidence, exit_rung, exit_layer, true_label) and summary.json."""
    from stage3_infer.config import InferConfig
    from stage3_infer.run import run

    run(
        InferConfig(
            checkpoint=checkpoint, out=out, exit=exit, split=split, node_ids=node_ids, nodes=nodes, edges=edges,
            batch_size=batch_size, cache_neighbours=cache_neighbours, model=model, seed=seed, device=device,
            max_targets=max_targets,
        )
    )


@plain_errors
def bench_infer_command(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Training run folder written by `pipeline train`."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the table as JSON: per policy accuracy, rel_drop, speedup, layer_fraction."),
    max_targets: Optional[int] = typer.Option(None, "--max-targets", help="Use only the first N test (and validation) nodes."),
    batch_size: int = typer.Option(32, "--batch-size", help="Texts per LLM forward batch."),
    device: str = typer.Option("cpu", "--device", help="Torch device, e.g. cpu or cuda."),
    repeats: int = typer.Option(1, "--repeats", help="Timed runs per policy; the fastest counts (for noisy shared machines)."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Early-exit benchmark on the test nodes, texts re-encoded by the LLM: accuracy, relative
    drop and wall-time speed-up against full depth (none), and the fraction of LLM layers run,
    for none, patience:1, patience:2 and two confidence thresholds chosen on validation nodes."""
    from stage3_infer.bench import BenchConfig, run_bench

    run_bench(BenchConfig(checkpoint=checkpoint, json_path=json_path, max_targets=max_targets, batch_size=batch_size, device=device, repeats=repeats))
