"""The ``pipeline`` command line. Each command builds a typed config and calls ``run(config)``.

Heavy imports (torch, transformers) happen inside the stages, so ``--help`` stays fast.
"""

from __future__ import annotations

import re

import typer

from pipeline import __version__
from pipeline.datasets_cli import datasets_app
from pipeline.core.errors import plain_errors
from pipeline.report_cli import report_command
from pipeline.run_cli import run_command
from stage1_encode.cli import bench_encode_command, encode_command
from stage2_train.cli import bench_train_command, bench_train_memory_command, export_command, train_command, train_help_command
from stage3_infer.cli import bench_infer_command, infer_command

EXIT_CODES_HELP = ("Exit status: 0 success; 2 bad input or usage (nothing written); 1 failure while running; "
                   "3 `encode --status` / `infer --status`: the work is incomplete.")

app = typer.Typer(
    name="pipeline",
    help=(
        "ENGINE on textual graphs: encode node texts with a frozen LLM into a per-layer Zarr "
        "cache, train a G-Ladder side GNN from that cache, and infer with dynamic early exit "
        "that runs the LLM only as deep as each node needs.\n\n" + EXIT_CODES_HELP
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def summary(doc: str | None) -> str:
    """The first sentence of a command's help, on one line: the command list of ``--help``
    (typer would show the help's whole first paragraph there, with its line breaks)."""
    text = " ".join((doc or "").split("\n\n")[0].split())
    return re.split(r"(?<=\.)\s+(?=[A-Z`])", text, maxsplit=1)[0]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pipeline {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", callback=_version, is_eager=True),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress and no log lines (warnings, errors and results are still printed)."),
) -> None:
    from pipeline.core.progress import is_interactive, library_bars_off, set_quiet

    set_quiet(quiet)
    if quiet or not is_interactive():
        library_bars_off()


bench_app = typer.Typer(help="Side-by-side benchmarks that print measured ratios. " + EXIT_CODES_HELP, no_args_is_help=True)
bench_app.command("encode", help=bench_encode_command.__doc__, short_help=summary(bench_encode_command.__doc__))(plain_errors(bench_encode_command))
bench_app.command("train", help=bench_train_command.__doc__, short_help=summary(bench_train_command.__doc__))(plain_errors(bench_train_command))
bench_app.command("train-memory", help=bench_train_memory_command.__doc__, short_help=summary(bench_train_memory_command.__doc__))(plain_errors(bench_train_memory_command))
bench_app.command("infer", help=bench_infer_command.__doc__, short_help=summary(bench_infer_command.__doc__))(bench_infer_command)

app.add_typer(datasets_app, name="datasets")
app.command("encode", help=encode_command.__doc__, short_help=summary(encode_command.__doc__))(plain_errors(encode_command))
app.command("train", help=train_command.__doc__, short_help=summary(train_command.__doc__), cls=train_help_command)(plain_errors(train_command))
app.command("export", help=export_command.__doc__, short_help=summary(export_command.__doc__))(plain_errors(export_command))
app.command("infer", help=infer_command.__doc__, short_help=summary(infer_command.__doc__))(infer_command)
app.command("run", help=run_command.__doc__, short_help=summary(run_command.__doc__))(plain_errors(run_command))
app.command("report", help=report_command.__doc__, short_help=summary(report_command.__doc__))(report_command)
app.add_typer(bench_app, name="bench")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
