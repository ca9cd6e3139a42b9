"""Log text as tests compare it: without a TTY each log and warning line starts with an ISO
8601 time (pipeline/core/progress.py), which :func:`untimed` checks and removes."""

from __future__ import annotations

import re

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d ")


def untimed(text: str) -> list[str]:
    """The lines of ``text``, each log or warning line's time stamp checked and removed
    (``Error:`` lines and result lines carry none)."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("Error:") and not line.startswith("- "):
            assert STAMP.match(line), f"no ISO time stamp: {line!r}"
        lines.append(STAMP.sub("", line))
    return lines
