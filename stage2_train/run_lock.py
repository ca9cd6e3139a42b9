"""One ``pipeline train`` at a time on an ``--out``: a second one is refused while the first runs.

Two runs on one ``--out`` (a cron job started again before the last one ended, a job
submitted twice) would write the same resumable state, ``RUN.resume``, and delete each
other's files. The running one holds an exclusive ``flock`` on the ``RUN.resume`` folder; the
kernel releases it when the process ends however it ends, so a killed run never blocks the
next. Under torchrun rank 0 holds it (the other ranks write nothing). The folder is created
for the lock when missing and removed again if the run saved nothing in it, so a run refused
or failed before its first save leaves nothing behind.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pipeline.core.errors import InputError
from stage2_train.resume import state_dir

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not guarded there
    fcntl = None


@contextmanager
def exclusive_run(out: str | Path, holder: bool = True) -> Iterator[None]:
    """Hold ``RUN.resume``'s lock for the block (``holder`` False: a rank that writes nothing)."""
    if not holder or fcntl is None:
        yield
        return
    folder = state_dir(out)
    created, fd = _open_locked(folder, out)
    try:
        yield
    finally:
        try:
            if created and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()  # nothing was saved: no trace of this run
        finally:
            os.close(fd)  # releases the lock


def _open_locked(folder: Path, out: str | Path) -> tuple[bool, int]:
    """(whether this call created ``folder``, a descriptor holding its exclusive lock)."""
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--out {out}: {folder} is not a folder; `pipeline train` keeps its resumable state there: "
                         "move it away, or choose another --out")
    for _ in range(3):  # the folder can vanish between mkdir and open: a run before this one just finished
        created = False
        try:
            folder.mkdir(parents=True)
            created = True
        except FileExistsError:
            pass
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InputError(f"--out {out}: another `pipeline train` is writing this run now (it holds {folder}); "
                             "wait for it to end, or choose another --out") from None
        return created, fd
    raise InputError(f"--out {out}: {folder} appears and vanishes: is another `pipeline train` starting and ending on it?")
