"""``pipeline run``: the README's main job (encode -> train -> infer -> report)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.config_file import ConfigOption


def run_command(
    dataset: str = typer.Option("cora", "--dataset", help="Built-in dataset name or graph folder."),
    model: str = typer.Option("smollm2-135m", "--model", help="Encoder LLM: built-in name, HF id or local folder."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default artifacts/runs/<dataset>-<model>)."),
    max_length: int = typer.Option(
        32, "--max-length",
        help="Tokens kept per text: 32 (title and first sentence) keeps the CPU job near ten minutes on 2 cores; "
        "`pipeline encode` defaults to 256 (full abstracts).",
    ),
    layers: Optional[str] = typer.Option(None, "--layers", help="Rungs to cache: all, 0,5,10,... or every:K (default: ~7 spread evenly)."),
    split: str = typer.Option("random_60_20_20", "--split", help="Split name (seed i uses NAME_seed{i}), column, or random:0.6,0.2,0.2."),
    seeds: str = typer.Option("0", "--seeds", help="Comma-separated seeds; one model per seed."),
    epochs: int = typer.Option(200, "--epochs", help="Maximum training epochs (early stopping on validation)."),
    baselines: str = typer.Option("mlp,gcn,sage", "--baselines", help="Same-encoder baselines to train beside the ladder, or 'none'."),
    exit_policy: Optional[str] = typer.Option(
        None, "--exit", help="Early-exit policy for infer: patience:P, confidence:T, layer:I or none (default: the one training chose on validation)."
    ),
    force: bool = typer.Option(False, "--force", help="Redo train and infer even when their outputs are up to date."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Run the main job: encode the graph with the frozen LLM, train the G-Ladder and baselines
    from the cache, infer the test nodes with dynamic early exit, and write a report.

    A second run reuses every finished step whose configuration did not change.
    """
    from pipeline.main_job import MainJobConfig, run
    from stage2_train.config import parse_int_list

    chosen = () if baselines.strip() in ("", "none") else tuple(b.strip() for b in baselines.split(","))
    report = run(
        MainJobConfig(
            dataset=dataset, model=model, out=out, max_length=max_length, layers=layers, split=split,
            seeds=parse_int_list(seeds, "--seeds") or (), epochs=epochs, baselines=chosen, exit=exit_policy, force=force,
        )
    )
    typer.echo(f"report: {report}")
