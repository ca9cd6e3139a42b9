"""Built-in real datasets shipped inside the package (converted by scripts/convert_shared_data.py)."""

from __future__ import annotations

import json
from pathlib import Path

BUILTIN_ROOT = Path(__file__).parents[1] / "builtin_data"
BUILTINS = ("cora", "citeseer")
DEFAULT_DATASET = "cora"


def builtin_path(name: str) -> Path | None:
    """Folder of a built-in dataset, or None when ``name`` is not one."""
    return BUILTIN_ROOT / name if name in BUILTINS else None


def builtin_meta(name: str) -> dict:
    return json.loads((BUILTIN_ROOT / name / "meta.json").read_text())
