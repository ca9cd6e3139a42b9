"""``pipeline report``: the command is generated from ``ReportConfig`` (pipeline/core/options.py)."""

from __future__ import annotations

import typer

from pipeline.core.options import command
from pipeline.report.run import ReportConfig


def _report(config: ReportConfig) -> None:
    from pipeline.report.run import run

    path = run(config)
    typer.echo(f"report: {path}")
    for png in sorted(path.parent.glob("*.png")):
        typer.echo(f"figure: {png}")


report_command = command(ReportConfig, _report, """Write report.md and PNG figures for one or more runs: accuracy table (ladder vs baselines),
    exit-head accuracy over depth with gates, training curves, early-exit trade-off and exit-layer
    histogram, and the encode/train/infer benchmark figures. Works on any subset of stages and
    lists what is missing. Artifacts are found by their files: encode caches (manifest.json +
    zarr.json), training runs (summary.json + metrics.jsonl), infer outputs (predictions.parquet)
    and bench*.json.""")
