"""``pipeline datasets``: list built-ins, check, import and subset graphs."""

from __future__ import annotations

import typer

from pipeline.datasets import BUILTINS, builtin_meta

datasets_app = typer.Typer(help="Built-in datasets and tools for your own graphs.", invoke_without_command=True)


@datasets_app.callback()
def list_datasets(ctx: typer.Context) -> None:
    """List the built-in datasets with node, edge and class counts."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Built-in datasets")
    for col in ("name", "nodes", "edges", "classes", "splits"):
        table.add_column(col)
    for name in BUILTINS:
        meta = builtin_meta(name)
        table.add_row(name, str(meta["num_nodes"]), str(meta["num_undirected_edges"]), str(meta["num_classes"]), ", ".join(sorted(meta["splits"])))
    Console().print(table)
