"""``pipeline report``: build the typed config and call ``run``.

Only light imports here (typer, the config dataclass) so that ``pipeline --help`` is fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from pipeline.core.config_file import ConfigOption
from pipeline.core.errors import plain_errors  # errors as plain `Error: ...` lines (paths stay unwrapped)


@plain_errors
def report_command(
    run_dirs: List[Path] = typer.Argument(..., help="Folders written by the pipeline (searched recursively)."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Report folder (default: RUN_DIR/report, or report/ in the common parent of several RUN_DIRs)."
    ),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Write report.md and PNG figures for one or more runs: accuracy table (ladder vs baselines),
    exit-head accuracy over depth with gates, training curves, early-exit trade-off and exit-layer
    histogram, and the encode/train/infer benchmark figures. Works on any subset of stages and
    lists what is missing. Artifacts are found by their files: encode caches (manifest.json +
    zarr.json), training runs (summary.json + metrics.jsonl), infer outputs (predictions.parquet)
    and bench*.json."""
    from pipeline.report.run import ReportConfig, run

    path = run(ReportConfig(run_dirs=list(run_dirs), out=out))
    typer.echo(f"report: {path}")
    for png in sorted(path.parent.glob("*.png")):
        typer.echo(f"figure: {png}")
