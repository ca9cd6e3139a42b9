"""Which part of a job this process is: given, or read from the scheduler's variables.

The one rule for ``auto``: a SLURM array task is part ``SLURM_ARRAY_TASK_ID`` of
``SLURM_ARRAY_TASK_COUNT``; a torchrun rank is part ``RANK`` of ``WORLD_SIZE``. An array whose
task ids are not exactly ``0..COUNT-1`` (a resubmission of some tasks, ``--array=3,7``, or a
step, ``0-15:2``) says nothing about N, so it is refused: give ``I/N`` there. Both schedulers'
variables at once are refused too (which one splits the work is the user's choice).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from pipeline.core.errors import InputError
from pipeline.core.parsers import is_whole_number

AUTO = "auto"
SLURM_VARS = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT")
TORCHRUN_VARS = ("RANK", "WORLD_SIZE")


def parse_shard(text: str, flag: str = "--shard", environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N, or ``"auto"`` -> :func:`scheduler_shard`; InputError naming the flag otherwise."""
    if str(text).strip() == AUTO:
        return scheduler_shard(flag, os.environ if environ is None else environ)
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or not 0 <= int(m[1]) < int(m[2]):
        raise InputError(f"{flag} {text}: give I/N with 0 <= I < N, e.g. {flag} 0/4, or {flag} {AUTO} "
                         f"(part SLURM_ARRAY_TASK_ID of SLURM_ARRAY_TASK_COUNT, or RANK of WORLD_SIZE under torchrun)")
    return int(m[1]), int(m[2])


def scheduler_shard(flag: str, environ: Mapping[str, str]) -> tuple[int, int]:
    """(I, N) from a SLURM array task's or a torchrun rank's variables (see the module doc)."""
    slurm, torchrun = "SLURM_ARRAY_TASK_ID" in environ, "RANK" in environ
    if slurm and torchrun:
        raise InputError(f"{flag} {AUTO}: both a SLURM array task (SLURM_ARRAY_TASK_ID={environ['SLURM_ARRAY_TASK_ID']}) "
                         f"and a torchrun rank (RANK={environ['RANK']}) are set; give {flag} I/N")
    if not (slurm or torchrun):
        raise InputError(f"{flag} {AUTO}: neither a SLURM array task (SLURM_ARRAY_TASK_ID) nor a torchrun rank (RANK) "
                         f"is set; give {flag} I/N")
    names = SLURM_VARS if slurm else TORCHRUN_VARS
    values = [environ.get(name, "") for name in names]
    if not all(is_whole_number(v.strip(), signed=False) for v in values):
        raise InputError(f"{flag} {AUTO}: {' and '.join(f'{n}={v!r}' for n, v in zip(names, values))}: "
                         f"expected two whole numbers; give {flag} I/N")
    i, n = (int(v) for v in values)
    top = environ.get("SLURM_ARRAY_TASK_MAX", "").strip() if slurm else ""
    if not 0 <= i < n or (is_whole_number(top, signed=False) and int(top) != n - 1):
        ids = f" (task ids up to {top})" if top else ""
        raise InputError(f"{flag} {AUTO}: {names[0]}={i} of {names[1]}={n}{ids}: the tasks are not numbered 0..N-1, "
                         f"so N is unknown (a resubmission of some tasks?); give {flag} ${names[0]}/N with the job's N")
    return i, n
