"""Generic fixtures shared by the test modules."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner


@pytest.fixture
def write_graph(tmp_path):
    """``write_graph(nodes, edges, name="g", meta=None, splits=None) -> folder``.

    ``nodes``/``edges`` are ``pa.Table``s or dicts of column -> list (types inferred by
    pyarrow); ``None`` leaves that file out. ``splits`` maps a name to its JSON data.
    """

    def _write(nodes, edges, name: str = "g", meta: dict | None = None, splits: dict | None = None) -> Path:
        folder = tmp_path / name
        folder.mkdir(parents=True)
        for fname, table in (("nodes.parquet", nodes), ("edges.parquet", edges)):
            if table is not None:
                pq.write_table(table if isinstance(table, pa.Table) else pa.table(table), folder / fname)
        if meta is not None:
            (folder / "meta.json").write_text(json.dumps(meta))
        for split_name, data in (splits or {}).items():
            (folder / "splits").mkdir(exist_ok=True)
            (folder / "splits" / f"{split_name}.json").write_text(json.dumps(data))
        return folder

    return _write


@pytest.fixture
def cli():
    """``cli(*args) -> Result``: run ``pipeline ARGS`` in-process (stdout and stderr kept apart)."""
    from pipeline.cli import app

    runner = CliRunner()

    def _run(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return _run
