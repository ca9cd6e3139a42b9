"""``pipeline run``: the README's main job, encode -> train -> infer on a built-in graph."""

from __future__ import annotations

from pipeline.errors import PipelineError


def run_command() -> None:
    """Not implemented yet."""
    raise PipelineError("not implemented yet")
