"""Generic fixtures shared by the test modules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

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


@pytest.fixture(scope="session")
def cora_graph(tmp_path_factory):
    """``cora_graph(nodes) -> folder``: the Cora slice of ``nodes`` nodes (tests/cora_slice.py),
    written once a session into a folder named ``graph``. Read it; never change it."""
    from cora_slice import write_cora_slice

    made: dict[int, Path] = {}

    def _get(nodes: int) -> Path:
        if nodes not in made:
            made[nodes] = Path(write_cora_slice(tmp_path_factory.mktemp(f"cora{nodes}") / "graph", nodes).source)
        return made[nodes]

    return _get


@pytest.fixture(scope="session")
def cora_cache(cora_graph, tmp_path_factory):
    """``cora_cache(nodes, **settings) -> (graph folder, cache)``: that slice encoded by
    ``cora_slice.encode_slice``, once a session for each distinct nodes and settings, so modules
    asking for the same one share it. Read both; copy before changing anything."""
    from cora_slice import ENCODE_DEFAULTS, encode_slice

    made: dict[tuple, tuple[Path, Path]] = {}

    def _get(nodes: int, **settings) -> tuple[Path, Path]:
        key = (nodes, tuple(sorted({**ENCODE_DEFAULTS, **settings}.items())))
        if key not in made:
            graph = cora_graph(nodes)
            made[key] = graph, encode_slice(graph, tmp_path_factory.mktemp(f"cora{nodes}-cache") / "cache.zarr", **settings)
        return made[key]

    return _get


@pytest.fixture(scope="session")
def cora():
    """The built-in Cora graph (2,708 nodes), loaded once a session. Read it; never change it."""
    from pipeline.core.graph import load_graph

    return load_graph("cora")


@pytest.fixture(scope="session")
def cora_texts(cora) -> list[str]:
    """Six Cora texts of very different lengths: the longest (truncated by any small
    max_length), a tiny one, the shortest, the middle one, one at a tenth, the 50th longest."""
    texts = sorted(cora.texts, key=len)
    return [texts[-1], "Graphs.", texts[0], texts[len(texts) // 2], texts[len(texts) // 10], texts[-50]]


class Nights(NamedTuple):
    root: Path  # a folder of the session's own for runs made from these; each test names its own subfolder
    v2_graph: Path  # the 48-node slice: v1's 40 nodes + 8
    v1_cache: Path
    run1: Path  # a ladder trained on v1_cache with NIGHT_TRAIN
    v2_cache: Path  # v2_graph encoded with --reuse v1_cache


@pytest.fixture(scope="session")
def nights(tmp_path_factory, cora_cache) -> Nights:
    """Two nights of a growing graph (40 then 48 Cora nodes, NIGHT_SETTINGS), a ladder trained on
    the first: once a session. Read them; copy before changing anything."""
    from cora_slice import NIGHT_SETTINGS, NIGHT_TRAIN, encode_slice, write_cora_slice
    from stage2_train.config import TrainConfig
    from stage2_train.run import run as train

    root = tmp_path_factory.mktemp("nights")
    _, v1_cache = cora_cache(40, **NIGHT_SETTINGS)
    v2 = write_cora_slice(root / "v2", 48).source
    train(TrainConfig(cache=v1_cache, out=root / "run1", **NIGHT_TRAIN))
    encode_slice(v2, root / "v2.zarr", reuse=v1_cache, **NIGHT_SETTINGS)
    return Nights(root, Path(v2), v1_cache, root / "run1", root / "v2.zarr")
