"""The predictions format: exact files and columns, summary numbers, all-or-nothing writes."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.core.errors import InputError
from stage3_infer.predictions import Predictions, read_predictions, read_summary, summarize, write_outputs


def _preds(ids) -> Predictions:
    return Predictions(
        node_ids=ids,
        pred=np.array([0, 1, 1]),
        confidence=np.array([0.9, 0.5, 0.75]),
        exit_rung=np.array([1, 3, 1]),
        exit_layer=np.array([5, 30, 5]),
        labels=np.array([0, 0, -1]),
        label_names=["a", "b"],
    )


def test_write_and_read_back(tmp_path):
    p = _preds(np.array([10, 20, 30], dtype=np.int64))
    summary = summarize(p, policy="patience:1", layer_evals=40, full_depth_evals=90, wall_time_s=1.23456)
    out = tmp_path / "pred"
    write_outputs(out, p, summary, config={"exit": "patience:1", "out": out})
    assert sorted(f.name for f in out.iterdir()) == [".pipeline-artifact.json", "infer_config.json", "predictions.parquet", "summary.json"]
    assert [f.name for f in tmp_path.iterdir()] == ["pred"]  # no temp folder left behind
    assert pq.read_schema(out / "predictions.parquet").metadata == {b"format_version": b"1", b"graph_fingerprint": b""}
    t = read_predictions(out).to_pydict()
    assert t["node_id"] == [10, 20, 30]
    assert t["predicted_label"] == ["a", "b", "b"]
    assert t["exit_rung"] == [1, 3, 1] and t["exit_layer"] == [5, 30, 5]
    assert t["true_label"] == ["a", "a", None]
    assert t["confidence"] == pytest.approx([0.9, 0.5, 0.75])
    s = read_summary(out)
    assert s == {
        "format_version": 1,
        "policy": "patience:1",
        "num_targets": 3,
        "num_labelled": 2,
        "accuracy": 0.5,
        "mean_exit_rung": pytest.approx(5 / 3),
        "mean_exit_layer": pytest.approx(40 / 3),
        "exits_per_rung": [0, 2, 0, 1],
        "llm_layer_evals": 40,
        "llm_layer_evals_full_depth": 90,
        "layer_fraction": pytest.approx(40 / 90),
        "wall_time_s": 1.2346,
    }
    assert json.loads((out / "infer_config.json").read_text())["out"] == str(out)


def test_string_ids_and_overwrite(tmp_path):
    out = tmp_path / "pred"
    p = _preds(np.array(["p1", "p2", "p3"], dtype=object))
    summary = summarize(p, policy="none", layer_evals=0, full_depth_evals=0, wall_time_s=0)
    write_outputs(out, _preds(np.array([1, 2, 3])), summary)
    with pytest.raises(InputError, match="holds an earlier predictions; pass --overwrite to replace it"):
        write_outputs(out, p, summary)
    write_outputs(out, p, summary, overwrite=True)  # its own earlier output: replaced whole
    assert sorted(f.name for f in out.iterdir()) == [".pipeline-artifact.json", "predictions.parquet", "summary.json"]
    assert read_predictions(out / "predictions.parquet").column("node_id").to_pylist() == ["p1", "p2", "p3"]
    # a folder of the user's is never written into, with or without --overwrite
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="exists and was not written by `pipeline infer`"):
        write_outputs(mine, p, summary, overwrite=True)
    assert [f.name for f in mine.iterdir()] == ["keep.txt"] and (mine / "keep.txt").read_text() == "x"


def test_read_missing(tmp_path):
    with pytest.raises(InputError) as err:
        read_predictions(tmp_path)
    assert err.value.message == (
        f"{tmp_path}/predictions.parquet: no predictions here; `pipeline infer --checkpoint RUN_DIR --out DIR` writes them"
    )


def test_another_format_version_is_refused(tmp_path):
    """Both files carry format_version 1; a reader refuses either one of another version."""
    p = _preds(np.array([10, 20, 30], dtype=np.int64))
    out = tmp_path / "pred"
    write_outputs(out, p, summarize(p, policy="none", layer_evals=0, full_depth_evals=0, wall_time_s=0))
    rerun = f"rerun `pipeline infer --checkpoint RUN_DIR --out {out} --overwrite`"
    summary = json.loads((out / "summary.json").read_text())
    (out / "summary.json").write_text(json.dumps({**summary, "format_version": 2}))
    with pytest.raises(InputError) as err:
        read_summary(out)
    assert (err.value.message, err.value.exit_code) == (
        f"{out}/summary.json: format version 2, this version of the pipeline reads 1; {rerun}", 2)
    table = pq.read_table(out / "predictions.parquet")
    pq.write_table(table.replace_schema_metadata({b"format_version": b"2"}), out / "predictions.parquet")
    with pytest.raises(InputError) as err:
        read_predictions(out)
    assert err.value.message == f"{out}/predictions.parquet: format version 2, this version of the pipeline reads 1; {rerun}"
