"""The record ``pipeline export`` leaves in a tuned model's folder (``pipeline_export.json``).

It says which fine-tuning run produced the weights and what that tuning cost, so that a
cache encoded with the tuned model (``pipeline encode --model MODEL_DIR``) carries the cost
of the whole cascade (tune -> encode -> train) in its manifest.
"""

from __future__ import annotations

import json
from pathlib import Path

EXPORT_RECORD = "pipeline_export.json"


def read_export_record(model_dir: str | Path) -> dict | None:
    """The record of ``model_dir``, or None for a model that ``pipeline export`` did not write."""
    path = Path(model_dir) / EXPORT_RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None
