"""``pipeline datasets``: list built-ins, check, import, subset and synthesize graphs.

Each subcommand is generated from its config dataclass (pipeline/core/options.py), which
declares every flag once; the dataclasses live beside the code that runs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.core.builtin_datasets import BUILTINS, builtin_meta
from pipeline.core.config_file import ConfigOption
from pipeline.core.errors import plain_errors
from pipeline.core.options import command
from pipeline.graph_import import ImportConfig, run_import
from pipeline.graph_subset import SubsetConfig, run_subset
from pipeline.graph_summary import CheckConfig, run_check
from pipeline.graph_synth import SynthConfig, run_synth

EXIT_CODES_HELP = "Exit status: 0 success; 2 bad input or usage (nothing written); 1 failure while running."

datasets_app = typer.Typer(
    help="Built-in datasets and tools for your own graphs. " + EXIT_CODES_HELP,
    invoke_without_command=True,
)


@datasets_app.callback()
@plain_errors
def list_datasets(ctx: typer.Context, config: Optional[Path] = ConfigOption) -> None:
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


datasets_app.command("check")(command(CheckConfig, run_check, """Validate a graph and print its summary: nodes, edges, classes, label counts, text
    length percentiles, edge homophily, isolated nodes, connected components, splits.

    Every problem is reported at once, naming file, column and the first offending rows
    (0-based data rows); an invalid graph exits with status 2.
    """))


datasets_app.command("import")(command(ImportConfig, run_import, """Turn a CSV/TSV/JSONL nodes file plus an edge list into a graph folder (Parquet).

    The result is validated with the same checks as every other command (all problems at
    once, exit status 2, nothing written; rows count from 0, header and blank lines
    excluded), self-loops and duplicate edges are dropped with a warning, and OUT is
    written atomically with meta.json (provenance, label order) and datasets_import_config.json
    (this command's resolved configuration, reusable as --config).
    """))


datasets_app.command("subset")(command(SubsetConfig, run_subset, """Write a connected induced subgraph of N nodes for quick trial runs.

    Breadth-first from a start node drawn with the seed among nodes whose connected
    component is large enough; deterministic. Labels, the split column, label order and
    named splits (restricted to the kept nodes) are kept; ids stay the user's ids.
    """))


datasets_app.command("synth")(command(SynthConfig, run_synth, """Write a synthetic textual graph of N nodes for scale work, deterministic for a seed.

    Texts are class-conditional bags of real words (the Cora and CiteSeer vocabulary and
    word frequencies, with sentence breaks); degrees follow a power law (hubs); exactly a
    --homophily fraction of the edges join nodes of the same class; a split column holds a
    random 60/20/20 train/val/test split. OUT is written atomically in the standard format
    with meta.json (label order, generator settings) and datasets_synth_config.json. Memory is
    linear in N: texts are generated and written in chunks.
    """))
