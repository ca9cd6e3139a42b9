"""The one rule of every on-disk format's version: a reader refuses a version it does not read.

Each writer stores ``"format_version": FORMAT_VERSION`` in its JSON; :func:`check_version` is
what the readers call, so the message (the file, the version found, what to run) is one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core.errors import InputError

FORMAT_VERSION = 1
KEY = "format_version"


def check_version(data: Any, path: str | Path, rerun: str) -> None:
    """InputError (exit 2) unless ``data`` (the parsed JSON of ``path``) is of version 1;
    ``rerun`` names the command that writes it anew."""
    found = data.get(KEY) if isinstance(data, dict) else None
    if found != FORMAT_VERSION:
        raise InputError(f"{path}: format version {found!r}, this version of the pipeline reads {FORMAT_VERSION}; {rerun}")
