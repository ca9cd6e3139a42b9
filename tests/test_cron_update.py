"""``scripts/cron_update.sh``: a first night makes a version and points ``current`` at it; a night
whose step fails exits non-zero naming the step and leaves the previous version live and
untouched; a working second night reuses the cache, warm-starts, predicts only the new nodes
and switches ``current``. Real MiniLM on a Cora slice growing from 40 to 48 nodes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cora_slice import write_cora_slice
from pipeline.core.graph import load_graph

REPO = Path(__file__).resolve().parents[1]
ENV = {
    "PIPELINE": f"{sys.executable} -m pipeline",
    "ENCODE_FLAGS": "--model minilm-l6 --max-length 16 --block-size 16 --device cpu",
    "TRAIN_FLAGS": "--epochs 2 --patience 2 --batch-size 16 --hidden-channels 32 --num-threads 1",
    "INFER_FLAGS": "--batch-size 16",
}


def update(graph: Path, outputs: Path, version: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "PYTHONPATH": str(REPO), **ENV, "VERSION": version, **env}
    return subprocess.run(["bash", str(REPO / "scripts/cron_update.sh"), str(graph), str(outputs)],
                          env=full, capture_output=True, text=True, timeout=900)


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def first_night(tmp_path_factory):
    """(root, outputs) after a successful first update on the 40-node version."""
    root = tmp_path_factory.mktemp("cron")
    write_cora_slice(root / "v1", 40)
    write_cora_slice(root / "v2", 48)
    result = update(root / "v1", root / "outputs", "night1")
    assert result.returncode == 0, result.stderr[-3000:]
    return root, root / "outputs"


def test_first_night_goes_live(first_night) -> None:
    _, outputs = first_night
    assert os.readlink(outputs / "current") == "versions/night1"
    live = outputs / "current"
    assert {"cache.zarr", "run", "predictions", "report", "update.log"} <= {p.name for p in live.iterdir()}
    assert pq.read_table(live / "predictions" / "predictions.parquet").num_rows == 40  # every node is new
    assert (live / "report" / "report.md").is_file()


def test_failed_step_leaves_the_previous_version_live(first_night) -> None:
    root, outputs = first_night
    before = files(outputs / "versions" / "night1")
    # a narrower side network than last night's run: the warm start is refused (exit 2)
    result = update(root / "v2", outputs, "night2", TRAIN_FLAGS=ENV["TRAIN_FLAGS"].replace("--hidden-channels 32", "--hidden-channels 16"))
    assert result.returncode == 2, result.stderr[-3000:]
    assert (f"cron_update: step 'train' failed (exit 2); {outputs}/versions/night1 stays live (current), nothing switched. "
            f"Log: {outputs}/versions/night2.failed/update.log") in result.stderr
    assert "--init" in result.stderr and "--hidden-channels: " in result.stderr  # the refusal itself, from train
    assert os.readlink(outputs / "current") == "versions/night1"
    assert files(outputs / "versions" / "night1") == before  # untouched
    assert (outputs / "versions" / "night2.failed" / "cache.zarr").is_dir() and not (outputs / "versions" / "night2").exists()


@pytest.mark.slow
def test_second_night_updates_and_predicts_the_new_nodes(first_night) -> None:
    root, outputs = first_night
    result = update(root / "v2", outputs, "night3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.readlink(outputs / "current") == "versions/night3"
    log = (outputs / "current" / "update.log").read_text()
    assert "40 rows reused from" in log and "8 texts through the LLM (8 new, 0 edited)" in log
    new, old = load_graph(root / "v2"), load_graph(root / "v1")
    added = [i for i in new.node_ids.tolist() if i not in set(old.node_ids.tolist())]
    table = pq.read_table(outputs / "current" / "predictions" / "predictions.parquet")
    assert table.column("node_id").to_pylist() == added
    assert table.schema.metadata[b"graph_fingerprint"].decode() == new.fingerprint
