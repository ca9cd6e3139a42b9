"""Progress: without a TTY, periodic log lines instead of a redrawn bar."""

from __future__ import annotations

import io
import sys

from rich.console import Console

from pipeline.core import progress as progress_mod
from log_lines import untimed


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_non_tty_prints_periodic_log_lines(monkeypatch):
    stream = io.StringIO()  # not a TTY
    monkeypatch.setattr(sys, "stderr", stream)
    clock = FakeClock()
    monkeypatch.setattr(progress_mod.time, "perf_counter", clock)
    assert not progress_mod.is_interactive()
    with progress_mod.progress(total=100, description="encode", unit="nodes", log_every_s=10.0) as bar:
        for step in range(10):
            clock.now += 3.0  # a log line at most every 10 s: after steps 4, 8 and at the end
            bar.advance(10, loss=0.5 + step)
    lines = untimed(stream.getvalue())  # each line starts with its ISO 8601 time
    assert lines == [
        "encode: 40/100 nodes (3.3 nodes/s, eta 18s) loss=3.5",
        "encode: 80/100 nodes (3.3 nodes/s, eta 6s) loss=7.5",
        "encode: 100/100 nodes (3.3 nodes/s, eta 0s) loss=9.5",
    ]
    assert "\x1b" not in stream.getvalue()  # no control codes in batch logs


def test_log_and_warn_are_plain_single_lines(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    long_path = "/very/long/path/" + "x" * 200 + "/edges.parquet"
    progress_mod.warn(f"{long_path}: dropped 2 self-loop(s) at rows [1, 2] [bold]")
    progress_mod.log("done [red]3[/red]")
    assert untimed(stream.getvalue()) == [
        f"warning: {long_path}: dropped 2 self-loop(s) at rows [1, 2] [bold]",
        "done [red]3[/red]",
    ]


def test_tty_uses_a_bar(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(progress_mod, "is_interactive", lambda: True)
    monkeypatch.setattr(progress_mod, "console", Console(file=stream, width=120))
    with progress_mod.progress(total=3, description="train", unit="epochs") as bar:
        for _ in range(3):
            bar.advance(1, acc=0.9)
    assert bar._progress is not None and bar.done == 3
    assert "train" in stream.getvalue() and "3/3" in stream.getvalue()


def test_quiet_drops_progress_and_log_lines_but_not_warnings(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    progress_mod.set_quiet(True)  # what `pipeline --quiet COMMAND` does
    try:
        with progress_mod.progress(total=2, description="encode", unit="nodes", log_every_s=0.0) as bar:
            bar.advance(2)
        progress_mod.log("done")
        progress_mod.warn("kept")
    finally:
        progress_mod.set_quiet(False)
    assert untimed(stream.getvalue()) == ["warning: kept"]
    progress_mod.log("heard again")
    assert untimed(stream.getvalue())[-1] == "heard again"


def test_tty_lines_carry_no_time_stamp(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(progress_mod, "is_interactive", lambda: True)
    monkeypatch.setattr(progress_mod, "console", Console(file=stream, width=120))
    progress_mod.log("plain")
    assert stream.getvalue() == "plain\n"


def _library_bars(env_value: str | None) -> list[str]:
    """[transformers' bars enabled, the hub's bars disabled] after `pipeline encode --help` runs
    without a TTY in a fresh process that imported transformers first."""
    import os
    import subprocess

    probe = ("import transformers; from typer.testing import CliRunner; from pipeline.cli import app; "
             "CliRunner().invoke(app, ['encode', '--help']); "
             "import huggingface_hub.utils as hub; from transformers.utils import logging as tl; "
             "print(tl.is_progress_bar_enabled(), hub.are_progress_bars_disabled())")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    if env_value is not None:
        env["HF_HUB_DISABLE_PROGRESS_BARS"] = env_value
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    return res.stdout.split()[-2:]


def test_hugging_face_bars_are_off_in_batch_logs() -> None:
    """Without a TTY transformers' and the hub's redrawn bars (loading weights) are switched off,
    though imported before the switch; an explicit HF_HUB_DISABLE_PROGRESS_BARS wins."""
    assert _library_bars(None) == ["False", "True"]
    assert _library_bars("0") == ["True", "False"]
