"""The ``pipeline bench ... --json`` file: the only module that knows its format.

``{"kind": KIND, "format_version": 1, "figures": {...}}`` where KIND names the bench that wrote
it (``encode``, ``train``, ``train-memory``, ``infer``) and ``figures`` are that bench's measured
numbers (infer: ``{policy: {accuracy, rel_drop, speedup, layer_fraction, ...}}``). The reader
refuses another format version (:func:`pipeline.core.format_version.check_version`).
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.core.format_version import FORMAT_VERSION, KEY, check_version

KINDS = ("encode", "train", "train-memory", "infer")


def claim_bench(path: str | Path, kind: str, inputs=()) -> None:
    """Check ``--json PATH`` before the bench runs: an existing file is replaced only when it is
    this bench's own JSON (:func:`pipeline.core.ownership.claim_file`)."""
    from pipeline.core import ownership

    ownership.claim_file(path, "--json", f"pipeline bench {kind}", inputs=inputs)


def write_bench(path: str | Path, kind: str, figures: dict) -> Path:
    """Write the figures of bench ``kind`` to ``path`` atomically (its folder created if needed)."""
    from pipeline.core import atomic

    if kind not in KINDS:
        raise ValueError(f"unknown bench kind {kind!r}; one of {', '.join(KINDS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, {"kind": kind, KEY: FORMAT_VERSION, "figures": figures})
    return path


def read_bench(path: str | Path) -> tuple[str, dict]:
    """``(kind, figures)`` of a bench JSON; ValueError naming what is wrong otherwise, InputError
    (exit 2) for a bench JSON of another format version."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or data.get("kind") not in KINDS or not isinstance(data.get("figures"), dict):
        raise ValueError(f"not a `pipeline bench {'|'.join(KINDS)} --json` file (no known \"kind\" with \"figures\")")
    check_version(data, path, f"rerun `pipeline bench {data['kind']} ... --json {path}`")
    return data["kind"], data["figures"]
