"""The arguments and flags the ``pipeline datasets`` commands share, declared once.

Unlike the other commands, these name their output folder with a positional OUT; each
writes its flags beside the graph it writes (``datasets_<command>_config.json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from pipeline.core.options import argument, config_file_name, overwrite_option, save_flags

GRAPH_HELP = "A built-in dataset name (cora, citeseer) or a folder with nodes.parquet and edges.parquet."


def graph_argument() -> Any:
    """GRAPH: the graph a command reads."""
    return argument(help=GRAPH_HELP, show_default=False, metavar="GRAPH")


def out_argument() -> Any:
    """OUT: the graph folder a command writes."""
    return argument(help="Output graph folder (must not exist unless --overwrite).", show_default=False, metavar="OUT")


def graph_overwrite_option() -> Any:
    return overwrite_option("a graph", target="OUT")


def flags_file(command_name: str, config: Any) -> dict[str, Callable[[Path], None]]:
    """The ``extra_files`` entry that writes ``config``'s flags into the graph folder."""
    return {config_file_name(command_name): lambda path: save_flags(path, config)}
