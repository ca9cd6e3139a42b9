"""Chunk files read directly, without zarr: the fast path of every cache read.

An uncompressed array on a local disk stores chunk i as the raw C-order bytes of rows
``[i*c, (i+1)*c)`` in ``states/c/i/0/0`` (edge chunks full size): reading that file costs
~0.07 ms for a 160 KB chunk against ~1.5 ms through zarr's async machinery, and one row
(S x H values, contiguous in its chunk) is one ``pread`` of ~5 us. ``is_raw_layout`` reads
the array's ``zarr.json`` and accepts only that layout; readers go through zarr otherwise.
A missing or short chunk file is damage (every chunk is written, zeros included), never zeros.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

import numpy as np

from pipeline.core import guarded
from pipeline.core.errors import InputError
from stage1_encode.cache.manifest import completion_command

MAX_OPEN_CHUNKS = 1 << 16  # chunk files a reader keeps open for row reads (and at most half the fd limit)


def is_raw_layout(array_dir: Path) -> bool:
    """True when the array's chunk files are raw little-endian C-order bytes at ``c/i/0/0``
    (chunks of whole rows: every dimension after the first unsplit)."""
    try:
        meta = json.loads((array_dir / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    codecs = meta.get("codecs", [])
    return (
        sys.byteorder == "little"
        and len(meta.get("shape", [])) == 3
        and len(codecs) == 1 and codecs[0].get("name") == "bytes"
        and codecs[0].get("configuration", {}).get("endian", "little") == "little"
        and meta.get("chunk_key_encoding") == {"name": "default", "configuration": {"separator": "/"}}
        and not meta.get("storage_transformers")
        and meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape", [0])[1:] == meta["shape"][1:]
    )


def _open_files_allowed() -> int:
    """Chunk files a reader may keep open: half the process's soft fd limit, within [64, MAX_OPEN_CHUNKS].
    Out-of-core training reads neighbour rows from anywhere, so reopening files would cost more than the reads."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 512
    soft = MAX_OPEN_CHUNKS if soft == resource.RLIM_INFINITY else soft
    return max(64, min(MAX_OPEN_CHUNKS, soft // 2))


class RawChunks:
    """The chunk files of a cache's ``states`` array (raw layout), read whole or a row at a
    time; row reads keep their files open (bounded, oldest closed first; thread safe)."""

    def __init__(self, path: Path, manifest: dict):
        self.path, self.manifest = path, manifest
        self._prefix = str(path / "states" / "c") + os.sep
        self._fds: dict[int, int] = {}  # chunk -> open file, bounded by _max_fds
        self._max_fds = _open_files_allowed()
        self._lock = threading.Lock()

    def file(self, i: int) -> str:
        return f"{self._prefix}{i}{os.sep}0{os.sep}0"  # a string: Path joins cost more than the read

    def damaged(self, i: int, problem: str) -> InputError:
        fix = f"repair it with `{completion_command(self.manifest, self.path)}` (re-encodes the damaged blocks)"
        return guarded.damaged(self.file(i), f"chunk file of cache {self.path} {problem}", fix)

    def read_into(self, i: int, out: np.ndarray) -> None:
        """Chunk ``i`` as stored into ``out`` (c, S, H), C-contiguous, in one read."""
        try:
            with open(self.file(i), "rb", buffering=0) as f:
                got = f.readinto(memoryview(out).cast("B"))
        except FileNotFoundError:
            raise self.damaged(i, "is missing") from None
        if got != out.nbytes:
            raise self.damaged(i, f"has {got} bytes, expected {out.nbytes} (truncated)")

    def read_row(self, i: int, offset: int, out: np.ndarray, node: int) -> None:
        """The row at byte ``offset`` of chunk ``i`` (node ``node``) into ``out`` (S, H), one ``pread``."""
        got = os.preadv(self._fd(i), [out], offset)
        if got != out.nbytes:
            raise self.damaged(i, f"ends before node row {node} (truncated)")

    def _fd(self, i: int) -> int:
        with self._lock:
            fd = self._fds.get(i)
            if fd is None:
                try:
                    fd = os.open(self.file(i), os.O_RDONLY)
                except FileNotFoundError:
                    raise self.damaged(i, "is missing") from None
                if len(self._fds) >= self._max_fds:  # drop the oldest opened
                    os.close(self._fds.pop(next(iter(self._fds))))
                self._fds[i] = fd
            return fd

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
