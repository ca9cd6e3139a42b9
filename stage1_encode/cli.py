"""Placeholder until the stage lands (replaced by the stage's real command)."""

from pipeline.errors import PipelineError


def encode_command() -> None:
    """Not implemented yet."""
    raise PipelineError("not implemented yet")


def bench_encode_command() -> None:
    """Not implemented yet."""
    raise PipelineError("not implemented yet")
