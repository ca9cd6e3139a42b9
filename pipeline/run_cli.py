"""``pipeline run``: the README's main job (encode -> train -> infer -> report); the command is
generated from ``MainJobConfig`` (pipeline/core/options.py)."""

from __future__ import annotations

import typer

from pipeline.core.options import command
from pipeline.main_job import MainJobConfig


def _run(config: MainJobConfig) -> None:
    from pipeline.main_job import run

    report = run(config)
    typer.echo(f"report: {report}")


run_command = command(MainJobConfig, _run, """Run the main job: encode the graph with the frozen LLM, train the G-Ladder and baselines
    from the cache, infer the test nodes with dynamic early exit, and write a report.

    A second run reuses every finished step whose configuration did not change.
    """)
