"""``scripts/cron_update.sh``: a first night makes a version and points ``current`` at it; a quiet
night (no new node) writes an empty predictions file and goes live; a night whose step fails
exits non-zero naming the step, leaves the previous version live and untouched and keeps only
its log; the script's own problems (a dangling ``current``, a VERSION with '/') are named in
words; a simulated week (new nodes, no change, edits only, removals, a failed encode, a
retrain; ``slow``) goes live every night but the failed one. Real MiniLM on Cora slices.
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
    "INFER_FLAGS": "",
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
    failed = outputs / "versions" / "night2.failed"
    assert [p.name for p in failed.iterdir()] == ["update.log"] and not (outputs / "versions" / "night2").exists()
    assert "--hidden-channels: " in (failed / "update.log").read_text()  # the log keeps the refusal


def test_quiet_night_goes_live_with_an_empty_predictions_file(first_night) -> None:
    root, outputs = first_night
    result = update(root / "v1", outputs, "quiet")  # the same graph again: no node is new
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.readlink(outputs / "current") == "versions/quiet"
    assert "infer: no target (no node is new since" in result.stderr
    assert pq.read_table(outputs / "current" / "predictions" / "predictions.parquet").num_rows == 0
    assert (outputs / "current" / "report" / "report.md").is_file()


SCRIPT_REFUSALS = [  # (what to do to a fresh OUTPUTS_DIR, VERSION, the words)
    ("dangling", lambda out: (out / "current").symlink_to("versions/gone"), "v9",
     "{out}/current -> versions/gone: no such version (dangling link); point it at a good one"),
    ("slash", lambda out: None, "a/b", "VERSION 'a/b': a version name is one folder name"),
    ("not-a-link", lambda out: (out / "current").mkdir(), "v9", "{out}/current: not a link to a version"),
    ("failed-before", lambda out: (out / "versions" / "v9.failed").mkdir(parents=True), "v9", "version v9 failed before"),
]


@pytest.mark.parametrize("prepare,version,words", [c[1:] for c in SCRIPT_REFUSALS], ids=[c[0] for c in SCRIPT_REFUSALS])
def test_the_script_names_its_own_errors(tmp_path, prepare, version, words) -> None:
    graph = tmp_path / "graph"
    graph.mkdir()
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    prepare(outputs)
    before = sorted(str(p) for p in outputs.rglob("*"))
    result = update(graph, outputs, version, PIPELINE="false")  # never reaches a pipeline step
    assert result.returncode == 2, result.stderr
    assert words.format(out=outputs) in result.stderr and "nothing changed" in result.stderr, result.stderr
    added = set(str(p) for p in outputs.rglob("*")) - set(before)
    assert added <= {str(outputs / ".update.lock"), str(outputs / "versions")}, added  # its lock and the empty versions folder


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


def _damaged_graph(folder: Path) -> None:
    write_cora_slice(folder, 44, texts_suffix=" (revised)")
    (folder / "nodes.parquet").write_bytes(b"not parquet")


# (version, graph writer, extra env, goes live, predicted rows, words in the log)
WEEK = [
    ("mon", lambda f: write_cora_slice(f, 40), {}, True, 40, "encoding 40 of 40 nodes"),
    ("tue", lambda f: write_cora_slice(f, 48), {}, True, 8, "8 texts through the LLM (8 new, 0 edited)"),
    ("wed", lambda f: write_cora_slice(f, 48), {}, True, 0, "infer: no target (no node is new since"),
    ("thu", lambda f: write_cora_slice(f, 48, texts_suffix=" (revised)"), {}, True, 0, "48 texts through the LLM (0 new, 48 edited)"),
    ("fri", lambda f: write_cora_slice(f, 44, texts_suffix=" (revised)"), {}, True, 0, "44 rows reused from"),
    ("sat", _damaged_graph, {}, False, None, "step 'encode' failed (exit 2)"),
    ("sun", lambda f: write_cora_slice(f, 44, texts_suffix=" (revised)"), {"RETRAIN": "1"}, True, 0, "44 rows reused from"),
]


@pytest.mark.slow
def test_a_week_of_nights(tmp_path) -> None:
    """Every night but the failed one goes live; the failed one keeps only its log and the live
    version stays; Sunday retrains from scratch (no --init) on Friday's cache's rows."""
    outputs, live = tmp_path / "outputs", None
    for version, write, env, goes_live, rows, words in WEEK:
        graph = tmp_path / "graphs" / version
        write(graph)
        result = update(graph, outputs, version, **env)
        log = result.stderr
        assert words in log, (version, log[-3000:])
        if goes_live:
            assert result.returncode == 0, (version, log[-3000:])
            live = version
            assert pq.read_table(outputs / "current" / "predictions" / "predictions.parquet").num_rows == rows, version
            assert ("--init" in log) == (version not in ("mon", "sun")), version
        else:
            assert result.returncode == 2, (version, log[-3000:])
            assert [p.name for p in (outputs / "versions" / f"{version}.failed").iterdir()] == ["update.log"]
        assert os.readlink(outputs / "current") == f"versions/{live}", version
    assert sorted(p.name for p in (outputs / "versions").iterdir()) == ["fri", "mon", "sat.failed", "sun", "thu", "tue", "wed"]
