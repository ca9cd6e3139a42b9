"""The ``pipeline bench ... --json`` file: the only module that knows its format.

``{"kind": KIND, "figures": {...}}`` where KIND names the bench that wrote it (``encode``,
``train``, ``train-memory``, ``infer``) and ``figures`` are that bench's measured numbers
(infer: ``{policy: {accuracy, rel_drop, speedup, layer_fraction, ...}}``).
"""

from __future__ import annotations

import json
from pathlib import Path

KINDS = ("encode", "train", "train-memory", "infer")


def write_bench(path: str | Path, kind: str, figures: dict) -> Path:
    """Write the figures of bench ``kind`` to ``path`` (its folder created if needed)."""
    if kind not in KINDS:
        raise ValueError(f"unknown bench kind {kind!r}; one of {', '.join(KINDS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"kind": kind, "figures": figures}, indent=2) + "\n")
    return path


def read_bench(path: str | Path) -> tuple[str, dict]:
    """``(kind, figures)`` of a bench JSON; ValueError naming what is wrong otherwise."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or data.get("kind") not in KINDS or not isinstance(data.get("figures"), dict):
        raise ValueError(f"not a `pipeline bench {'|'.join(KINDS)} --json` file (no known \"kind\" with \"figures\")")
    return data["kind"], data["figures"]
