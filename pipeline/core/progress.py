"""Progress and logging for long work: a rich bar on a terminal, periodic log lines otherwise.

Batch jobs (cron, SLURM) have no TTY; redrawn bars would fill their logs with control
codes, so there the same progress is printed as one line every ``log_every_s`` seconds, and
every log and warning line starts with its local time in ISO 8601 (``2026-12-07T04:30:12+00:00``),
and Hugging Face's own bars are off (:func:`library_bars_off`).
``pipeline --quiet`` (:func:`set_quiet`) drops progress and log lines; warnings and errors stay.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from datetime import datetime
from typing import Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)
_quiet = False


def set_quiet(quiet: bool) -> None:
    """``pipeline --quiet``: no progress and no log lines; warnings and errors are still printed."""
    global _quiet
    _quiet = quiet


def library_bars_off() -> None:
    """Hugging Face's own redrawn bars (loading weights, downloads) stay out of batch logs and
    ``--quiet`` runs; an explicit ``HF_HUB_DISABLE_PROGRESS_BARS`` wins."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] != "1":
        return
    if "huggingface_hub" in sys.modules:  # imported already: its switch was read at import
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def stamp() -> str:
    """What starts a line without a TTY: the local time, ISO 8601 to the second, and a space."""
    return "" if is_interactive() else datetime.now().astimezone().isoformat(timespec="seconds") + " "


def log(message: str) -> None:
    """One line of outer-loop logging, on stderr so stdout stays machine-readable.

    Never wrapped (batch logs keep one message a line) and never read as rich markup
    (messages quote user values, paths and ``[rows]``).
    """
    if not _quiet:
        console.print(stamp() + escape(message), highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    console.print(f"{stamp()}[bold yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def is_interactive() -> bool:
    return sys.stderr.isatty()


class ProgressTracker:
    """``advance(n, **stats)`` updates the bar, ``stats`` are shown as ``key=value``."""

    def __init__(self, total: int, description: str, unit: str, log_every_s: float) -> None:
        self.total, self.description, self.unit = total, description, unit
        self.done = 0
        self.stats: dict[str, str] = {}
        self.start = time.perf_counter()
        self._last_log = self.start
        self._log_every_s = log_every_s
        self._progress: Progress | None = None
        self._task = None

    def _stats_text(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.stats.items())

    def advance(self, n: int = 1, **stats: object) -> None:
        self.done += n
        for key, value in stats.items():
            self.stats[key] = f"{value:.4g}" if isinstance(value, float) else str(value)
        if self._progress is not None:
            self._progress.update(self._task, advance=n, stats=self._stats_text())
            return
        now = time.perf_counter()
        if now - self._last_log >= self._log_every_s or self.done >= self.total:
            self._last_log = now
            elapsed = now - self.start
            rate = self.done / elapsed if elapsed > 0 else 0.0
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            log(
                f"{self.description}: {self.done}/{self.total} {self.unit} "
                f"({rate:.1f} {self.unit}/s, eta {eta:.0f}s) {self._stats_text()}".rstrip()
            )


@contextmanager
def progress(total: int, description: str, unit: str = "items", log_every_s: float = 10.0) -> Iterator[ProgressTracker]:
    """Context manager yielding a :class:`ProgressTracker` (bar on a TTY, log lines otherwise)."""
    tracker = ProgressTracker(total, description, unit, log_every_s)
    if not is_interactive() or _quiet:  # quiet: log() drops the tracker's lines
        yield tracker
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[stats]}"),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        tracker._progress = bar
        tracker._task = bar.add_task(description, total=total, stats="")
        yield tracker
