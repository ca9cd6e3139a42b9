"""Flag value parsers shared by every command: integer and number lists, whole numbers, sizes, random splits.

Each raises ``InputError`` (or ``ValueError`` for ``parse_random_split``) naming the flag."""

from __future__ import annotations

import re

from pipeline.core.errors import InputError


def is_whole_number(text: str, signed: bool = True) -> bool:
    """Whether ``text`` is a run of ASCII digits (after a "-" when ``signed``): what ``int(text)``
    reads without surprises (``str.isdigit`` also accepts "²", which ``int`` refuses)."""
    return re.fullmatch(r"-?[0-9]+" if signed else r"[0-9]+", text) is not None


def parse_random_split(spec: str) -> tuple[float, float, float]:
    """``random:0.6,0.2,0.2`` -> fractions (train, val, test); ValueError if malformed."""
    parts = spec.split(":", 1)[1].split(",")
    try:
        fr = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError("expected three fractions, e.g. random:0.6,0.2,0.2") from None
    if len(fr) != 3 or any(f < 0 for f in fr) or fr[0] == 0 or sum(fr) > 1 + 1e-9:
        raise ValueError("expected three non-negative fractions (train > 0) summing to at most 1")
    return fr  # type: ignore[return-value]


def parse_int_list(text: str | None, flag: str) -> tuple[int, ...] | None:
    """``"0,1,2"`` -> (0, 1, 2); ``None``/empty -> None. Bad text raises InputError naming the flag."""
    return _parse_list(text, flag, int, "integers, e.g. 0,1,2")


def parse_float_list(text: str | None, flag: str) -> tuple[float, ...] | None:
    """``"1,1,2"`` -> (1.0, 1.0, 2.0); ``None``/empty -> None. Bad text raises InputError naming the flag."""
    return _parse_list(text, flag, float, "numbers, e.g. 1,1,2")


def _parse_list(text, flag: str, cast, expected: str) -> tuple | None:
    if text is None or str(text).strip() == "":
        return None
    try:
        return tuple(cast(p) for p in str(text).split(","))
    except ValueError:
        raise InputError(f"{flag} {text}: expected comma-separated {expected}") from None


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str | None, flag: str = "--memory-budget") -> int | None:
    """``512MB`` / ``2GiB`` / ``1.5G`` / ``1000000`` -> bytes (K/M/G/T are powers of 10, KiB... of 2)."""
    if text is None or str(text).strip() == "":
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS or float(m.group(1)) * _UNITS[unit] < 1:
        raise InputError(f"{flag} {text}: expected a size such as 512MB, 2GiB or 1.5G (units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
    return int(float(m.group(1)) * _UNITS[unit])


def format_size(n: int) -> str:
    for unit, f in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= f:
            return f"{n / f:.1f} {unit}"
    return f"{n} B"
