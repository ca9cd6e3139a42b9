"""The one way the pipeline writes: under a unique temporary name in the same folder, flushed
to disk, then renamed into place. A reader sees the old file/folder or the new one, never half.

Temporary names carry the writer's host and PID (``.NAME.tmp-HOST-PID-UUID``), so the next
run on the same output can tell a killed writer's leftovers (same host, PID gone) from a
live writer's work (another host, or a running PID) and remove only the former
(:func:`remove_stale_temps`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

TEMP_TAGS = ("tmp", "old")  # tmp: being written; old: a replaced output waiting to be deleted
# Tests only: seconds a StagedFolder waits, complete, before its rename (so a kill can land there).
STALL_ENV = "PIPELINE_TEST_STALL_COMMIT"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", socket.gethostname()) or "host"


def temp_sibling(path: str | Path, tag: str = "tmp") -> Path:
    """A fresh hidden sibling of ``path`` no other writer uses (uuids differ across hosts and pods)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{tag}-{_host()}-{os.getpid()}-{uuid.uuid4().hex[:12]}")


def _temp_pattern(name: str) -> re.Pattern:
    """Temporary names of ``name`` (a regular expression: one name escaped, or any)."""
    return re.compile(rf"^\.{name}\.(?:{'|'.join(TEMP_TAGS)})-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{{8,32}}$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OverflowError:
        return False
    return True


def stale_temps(path: str | Path) -> list[Path]:
    """Temporary siblings of ``path`` whose writer ran on this host and is gone."""
    path = Path(path)
    return _stale(path.parent, _temp_pattern(re.escape(path.name)))


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Delete what :func:`stale_temps` finds (only the pipeline's own temporary names); returns them."""
    return _remove(stale_temps(path))


def remove_stale_temps_in(folder: str | Path) -> list[Path]:
    """Delete the temporaries of any name in ``folder`` whose writer ran on this host and is gone
    (one pass for a folder of many small files); returns them."""
    return _remove(_stale(Path(folder), _temp_pattern(".+")))


def _stale(folder: Path, pattern: re.Pattern) -> list[Path]:
    if not folder.is_dir():
        return []
    host, found = _host(), []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    for entry in entries:
        m = pattern.match(entry.name)
        if m and m["host"] == host and int(m["pid"]) != os.getpid() and not _pid_alive(int(m["pid"])):
            found.append(entry)
    return sorted(found)


def _remove(paths: list[Path]) -> list[Path]:
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return paths


def _fsync_path(path: Path, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file and folder under ``folder`` (before it is renamed into place)."""
    for root, _dirs, files in os.walk(folder):
        for f in files:
            _fsync_path(Path(root) / f)
        _fsync_path(Path(root), directory=True)


@contextmanager
def staged_file(path: str | Path) -> Iterator[Path]:
    """``with staged_file(p) as tmp: write tmp`` -> ``tmp`` is flushed and renamed to ``p`` on
    success, deleted on failure."""
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        yield tmp
        _fsync_path(tmp)
        os.replace(tmp, path)
        _fsync_path(path.parent, directory=True)
    finally:
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()


def write_bytes(path: str | Path, data: bytes) -> None:
    with staged_file(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | Path, data, **dumps_kwargs) -> None:
    """``data`` as JSON (``indent=2`` unless given), atomically."""
    dumps_kwargs.setdefault("indent", 2)
    write_text(path, json.dumps(data, **dumps_kwargs) + "\n")


class StagedFolder:
    """A folder built under a temporary sibling name and renamed to ``out`` by :meth:`commit`.

    Created with the process umask's permissions. ``commit(replace=...)``: ``replace`` is
    called with the existing ``out`` (if any) just before the swap and must return True to
    allow replacing it (the caller's ownership check); the old folder is renamed aside, the
    new one renamed in, then the old one deleted.
    """

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.path = temp_sibling(self.out)
        self.path.mkdir()
        self.committed = False

    def __enter__(self) -> "StagedFolder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.abort()

    def abort(self) -> None:
        """Delete the temporary folder unless it was committed."""
        if not self.committed:
            shutil.rmtree(self.path, ignore_errors=True)

    def commit(self, replace=None) -> Path:
        fsync_tree(self.path)
        if os.environ.get(STALL_ENV):
            import time

            time.sleep(float(os.environ[STALL_ENV]))
        move_into_place(self.path, self.out, replace)
        self.committed = True
        return self.out


def move_into_place(tmp: Path, out: Path, replace=None) -> None:
    """Rename the finished folder ``tmp`` to ``out``; an existing ``out`` is replaced only when
    ``replace(out)`` returns True (else ``FileExistsError``), and as late as possible."""
    if out.exists() or out.is_symlink():
        if replace is None or not replace(out):
            raise FileExistsError(out)
        old = temp_sibling(out, "old")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)
    _fsync_path(out.parent, directory=True)
