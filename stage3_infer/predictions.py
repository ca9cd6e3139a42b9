"""The predictions format: ``predictions.parquet`` + ``summary.json`` (writer and reader).

``predictions.parquet``, one row per target node, in target order:
  ``node_id``          the user's id (int64 or string, as in the input graph)
  ``predicted_label``  class name (string)
  ``confidence``       max softmax probability of the exit head (float32)
  ``exit_rung``        ladder rung that answered, 0..S-1 (int32)
  ``exit_layer``       LLM hidden-state index of that rung, 0..L (int32); the text ran this deep
  ``true_label``       the known label name, null when unlabeled or a new node (string)

The file's schema metadata ``format_version`` is ``1`` and ``graph_fingerprint`` names the
graph version the predictions were made on (``pipeline/core/graph.py``; with ``--nodes``, of the
graph grown by them).

``summary.json``: ``format_version`` (1), the policy, target count, accuracy over labelled targets (null if none),
mean exit rung and layer, LLM layer evaluations against full depth, wall time and what
produced it (checkpoint, model, rung layers). The readers refuse either file of another format
version (:func:`pipeline.core.format_version.check_version`).

The folder (with ``infer_config.json`` and the ownership marker ``.pipeline-artifact.json``,
kind "predictions") is written under a temporary name next to ``out`` and renamed at the end,
so a failed run leaves nothing behind; it replaces only an earlier infer output, and only with
``--overwrite`` (:func:`claim`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core import atomic, guarded, ownership
from pipeline.core.config_file import save_resolved_config
from pipeline.core.errors import InputError
from pipeline.core.format_version import FORMAT_VERSION, KEY, check_version
from pipeline.core.options import config_file_name
from pipeline.core.parsers import is_whole_number

PREDICTIONS_FILE, SUMMARY_FILE, CONFIG_FILE = "predictions.parquet", "summary.json", config_file_name("infer")
COLUMNS = ("node_id", "predicted_label", "confidence", "exit_rung", "exit_layer", "true_label")


@dataclass
class Predictions:
    """What the driver hands over; arrays are (M,) over the M targets."""

    node_ids: np.ndarray  # (M,) int64 or object (str)
    pred: np.ndarray  # (M,) int64 class index
    confidence: np.ndarray  # (M,) float
    exit_rung: np.ndarray  # (M,) int
    exit_layer: np.ndarray  # (M,) int, LLM state index of the exit rung
    labels: np.ndarray  # (M,) int64 class index, -1 = unknown
    label_names: list[str]  # (C,)
    graph_fingerprint: str = ""  # the graph the predictions were made on

    def accuracy(self) -> float | None:
        known = self.labels >= 0
        return float((self.pred[known] == self.labels[known]).mean()) if known.any() else None


def predictions_table(p: Predictions) -> pa.Table:
    names = np.asarray(p.label_names, dtype=object)
    ids = p.node_ids
    id_array = pa.array(ids.tolist(), type=pa.string() if ids.dtype == object else pa.int64())
    true = [names[i] if i >= 0 else None for i in p.labels.tolist()]
    table = pa.table(
        {
            "node_id": id_array,
            "predicted_label": pa.array(names[p.pred].tolist(), type=pa.string()),
            "confidence": pa.array(np.asarray(p.confidence, dtype=np.float32)),
            "exit_rung": pa.array(np.asarray(p.exit_rung, dtype=np.int32)),
            "exit_layer": pa.array(np.asarray(p.exit_layer, dtype=np.int32)),
            "true_label": pa.array(true, type=pa.string()),
        }
    )
    return table.replace_schema_metadata({KEY: str(FORMAT_VERSION), "graph_fingerprint": p.graph_fingerprint})


def summarize(
    p: Predictions,
    *,
    policy: str,
    layer_evals: int,
    full_depth_evals: int,
    wall_time_s: float,
    extra: dict | None = None,
) -> dict:
    """The ``summary.json`` content. ``layer_evals`` counts (text, transformer layer) pairs run."""
    known = int((p.labels >= 0).sum())
    rungs = np.asarray(p.exit_rung)
    return {
        KEY: FORMAT_VERSION,
        "policy": policy,
        "num_targets": int(len(p.pred)),
        "num_labelled": known,
        "accuracy": p.accuracy(),
        "mean_exit_rung": float(rungs.mean()) if len(rungs) else None,
        "mean_exit_layer": float(np.mean(p.exit_layer)) if len(rungs) else None,
        "exits_per_rung": np.bincount(rungs, minlength=int(rungs.max()) + 1 if len(rungs) else 0).tolist(),
        "llm_layer_evals": int(layer_evals),
        "llm_layer_evals_full_depth": int(full_depth_evals),
        "layer_fraction": layer_evals / full_depth_evals if full_depth_evals else None,
        "wall_time_s": round(float(wall_time_s), 4),
        **(extra or {}),
    }


def claim(out: Path, overwrite: bool, inputs=()) -> bool:
    """Check ``--out`` before any work (see :func:`pipeline.core.ownership.claim_output`)."""
    return ownership.claim_output(out, "predictions", "--out", overwrite=overwrite, inputs=inputs)


def write_outputs(out: Path, p: Predictions, summary: dict, config: dict | None = None, overwrite: bool = False) -> None:
    """Write predictions (+ summary, + resolved config) as the folder ``out``, all or nothing;
    an earlier infer output there is replaced only with ``overwrite``."""
    out = Path(out)
    claim(out, overwrite)
    with atomic.StagedFolder(out) as staged:
        pq.write_table(predictions_table(p), staged.path / PREDICTIONS_FILE)
        (staged.path / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        if config is not None:
            save_resolved_config(staged.path / CONFIG_FILE, config)
        ownership.write_marker(staged.path, "predictions")
        staged.commit(ownership.replacer("predictions", "--out", overwrite))


def rerun_hint(folder: Path) -> str:
    return f"rerun `pipeline infer --checkpoint RUN_DIR --out {folder} --overwrite`"


def _schema_version(table: pa.Table) -> int | str | None:
    """The schema metadata's ``format_version`` (stored as text), as an int when it is one."""
    raw = (table.schema.metadata or {}).get(KEY.encode())
    if raw is None:
        return None
    text = raw.decode("utf-8", "replace")
    return int(text) if is_whole_number(text) else text


def read_predictions(out: Path) -> pa.Table:
    """Read ``predictions.parquet`` from an infer output folder (or the file itself); refuse
    another format version."""
    path = Path(out)
    path = path / PREDICTIONS_FILE if path.is_dir() else path
    if not path.is_file():
        raise InputError(f"{path}: no predictions here; `pipeline infer --checkpoint RUN_DIR --out DIR` writes them")
    table = guarded.read_parquet(path, rerun_hint(path.parent))
    check_version({KEY: _schema_version(table)}, path, rerun_hint(path.parent))
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise InputError(f"{path}: not a predictions file, missing column(s) {missing}")
    return table


def read_summary(out: Path) -> dict:
    """``summary.json`` of an infer output folder; refuse another format version."""
    path = Path(out) / SUMMARY_FILE
    summary = guarded.read_json(path, rerun_hint(Path(out)))
    check_version(summary, path, rerun_hint(Path(out)))
    return summary
