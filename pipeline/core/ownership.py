"""Which outputs a command may replace: only folders it can prove the pipeline wrote, never its
own inputs.

Every output folder carries a marker file, ``.pipeline-artifact.json``, naming its kind
(``cache``, ``run``, ``predictions``, ``report``, ``graph``, ``job``, ``bench``, ``model``), the command
that wrote it and its ``format_version`` (1). :func:`claim_output` is called before any work and before any file is written:
it refuses (InputError, exit 2, "nothing was changed") an output that is a symlink, a file,
under a file, not writable, overlapping one of the command's inputs, a folder the pipeline
did not write, or an earlier output of the same kind without ``--overwrite``; then it removes
the temporary folders that killed writers left next to it (:mod:`pipeline.core.atomic`).
Only the marker proves ownership: a folder without one (or with a damaged one, or one of another
format version) is never replaced or removed, whatever files it holds.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable

from pipeline.core import atomic
from pipeline.core.errors import InputError
from pipeline.core.format_version import FORMAT_VERSION, KEY, check_version

MARKER = ".pipeline-artifact.json"
KINDS = {
    "cache": "pipeline encode",
    "run": "pipeline train",
    "predictions": "pipeline infer",
    "report": "pipeline report",
    "graph": "pipeline datasets",
    "job": "pipeline run",
    "bench": "pipeline bench",
    "model": "pipeline export",
}
UNCHANGED = "(nothing was changed)"


def _read_marker(folder: str | Path) -> dict | None:
    """``folder``'s marker naming one of the pipeline's kinds, of any version; else None."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("kind") in KINDS else None


def marker_kind(folder: str | Path) -> str | None:
    """The kind named by ``folder``'s version-1 marker, or None (no marker, unreadable, not
    ours, or of another format version)."""
    data = _read_marker(folder)
    return data["kind"] if data is not None and data.get(KEY) == FORMAT_VERSION else None


def check_marker_version(folder: str | Path, flag: str) -> None:
    """Refuse (exit 2) a folder whose marker is of another format version: such a marker does
    not prove the folder is the pipeline's own, so the folder is never replaced or removed."""
    data = _read_marker(folder)
    if data is not None:
        rerun = (f"a marker of another version does not prove {flag} {folder} is the pipeline's own; "
                 f"choose a new or empty {flag} {UNCHANGED}")
        check_version(data, Path(folder) / MARKER, rerun)


def write_marker(folder: str | Path, kind: str) -> None:
    """Mark ``folder`` (usually a temporary one, before it is renamed into place) as ``kind``."""
    assert kind in KINDS, kind
    atomic.write_json(Path(folder) / MARKER, {"kind": kind, "written_by": KINDS[kind], KEY: FORMAT_VERSION})


def owns(folder: str | Path, kind: str) -> bool:
    """True when ``folder`` is a real folder whose marker names the pipeline's ``kind`` output."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return False
    return marker_kind(folder) == kind  # a missing or damaged marker proves nothing


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _check_place(path: Path, flag: str, what: str) -> None:
    """Refuse a path that is a symlink, a file where a folder goes, under a file, or unwritable."""
    if path.is_symlink():
        raise InputError(f"{flag} {path}: is a symbolic link; give the real {what} path {UNCHANGED}")
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise InputError(f"{flag} {path}: {parent} is a file, not a folder; choose another {flag} {UNCHANGED}")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise InputError(f"{flag} {path}: cannot write in {parent} (permission denied); choose a writable {flag} {UNCHANGED}")
            break


def check_inputs_overlap(path: Path, flag: str, inputs: Iterable[str | Path], inside_ok: bool = False) -> None:
    """Refuse an output that is, contains, or (unless ``inside_ok``) lies inside an input."""
    out = _real(path)
    for inp in inputs:
        if inp is None:
            continue
        src = _real(Path(inp))
        if out == src:
            how = "is"
        elif _inside(src, out):
            how = "contains"
        elif _inside(out, src) and not inside_ok:
            how = "lies inside"
        else:
            continue
        raise InputError(f"{flag} {path}: {how} this command's input {inp}; choose a separate {flag} {UNCHANGED}")


def claim_output(
    path: str | Path,
    kind: str,
    flag: str,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | Path] = (),
    resume: bool = False,
    inside_inputs_ok: bool = False,
) -> bool:
    """Check, before any work, that this command may write its ``kind`` output at ``path``.

    Returns True when ``path`` holds the pipeline's own earlier ``kind`` output (which the
    command may then resume, with ``resume``, or replace, with ``overwrite``), False when
    ``path`` is absent or an empty folder. Removes killed writers' temporary siblings.
    """
    path = Path(path)
    command = KINDS[kind]
    _check_place(path, flag, "folder")
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path}: is a file; give a folder {UNCHANGED}")
    check_inputs_overlap(path, flag, inputs, inside_inputs_ok)
    own = False
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise InputError(f"{flag} {path}: cannot write in it (permission denied); choose a writable {flag} {UNCHANGED}")
        if any(path.iterdir()):
            check_marker_version(path, flag)
            other = marker_kind(path)
            if other is not None and other != kind:
                raise InputError(
                    f"{flag} {path}: holds a {other} written by `{KINDS[other]}`, not a {kind}; choose another {flag} {UNCHANGED}"
                )
            if not owns(path, kind):
                raise InputError(
                    f"{flag} {path}: exists and was not written by `{command}` (no {MARKER} marking it a {kind}); "
                    f"choose a new or empty folder {UNCHANGED}"
                )
            own = True
            if not overwrite and not resume:
                raise InputError(f"{flag} {path}: holds an earlier {kind}; pass --overwrite to replace it, or choose another {flag} {UNCHANGED}")
    atomic.remove_stale_temps(path)
    return own


def replacer(kind: str, flag: str, overwrite: bool) -> Callable[[Path], bool]:
    """The ``replace`` test of :meth:`atomic.StagedFolder.commit`: an output that appeared or
    changed while the command worked is replaced only when it is still its own and allowed."""

    def allow(out: Path) -> bool:
        if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
            return True
        if not overwrite:
            raise InputError(f"{flag} {out}: appeared while this command ran; choose another {flag} or pass --overwrite (the new result was not kept)")
        if not owns(out, kind):
            raise InputError(f"{flag} {out}: is no longer a {kind} written by `{KINDS[kind]}`; it was left as it is (the new result was not kept)")
        return True

    return allow


def remove_owned(path: str | Path, kind: str) -> None:
    """Delete ``path`` only if it is the pipeline's own ``kind`` output (checked again now):
    renamed aside first, so a crash never leaves half of it under its name."""
    path = Path(path)
    if not owns(path, kind):
        raise InputError(f"{path}: not a {kind} written by `{KINDS[kind]}`; it was left as it is")
    old = atomic.temp_sibling(path, "old")
    os.replace(path, old)
    shutil.rmtree(old, ignore_errors=True)


WRITTEN_BY = "written_by"  # key naming the command in every JSON file output (--json)


def claim_file(path: str | Path, flag: str, command: str, *, inputs: Iterable[str | Path] = ()) -> None:
    """Check a file output (``--json PATH``) before any work: not a symlink, folder or input,
    in a writable folder; an existing file is replaced only when it is a JSON object that
    ``command`` wrote (its ``written_by`` key)."""
    path = Path(path)
    _check_place(path, flag, "file")
    if path.exists() and not path.is_file():
        raise InputError(f"{flag} {path}: is a folder; give a file path {UNCHANGED}")
    check_inputs_overlap(path, flag, inputs, inside_ok=True)
    if path.is_file():
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, ValueError):
            data = None
        ours = isinstance(data, dict) and data.get(WRITTEN_BY) == command
        if not ours:
            raise InputError(f"{flag} {path}: exists and was not written by `{command}`; choose a new file {UNCHANGED}")
    atomic.remove_stale_temps(path)


def write_json_output(path: str | Path, data: dict, command: str) -> None:
    """Write a ``--json`` output atomically, naming the command that wrote it (``written_by``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, {**data, WRITTEN_BY: command}, default=str)
