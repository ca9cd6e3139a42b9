"""Shared by the scripts/results_*.py: read run folders and bench JSON, write and render the
small JSON tables under docs/results/ that docs/results.md shows (scripts/results_page.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package's own readers (read_run, flag_values) from a checkout
RESULTS = ROOT / "docs" / "results"
PAGE = ROOT / "docs" / "results.md"


def run_files(run: str | Path):
    """A run folder's JSON files (:class:`stage2_train.checkpoint.RunFiles`: its summary with the
    measured costs of cost.json merged in, as `pipeline report` reads it); a folder that is not a
    finished run is refused by name."""
    from pipeline.core.errors import PipelineError
    from stage2_train.checkpoint import read_run

    try:
        return read_run(run)
    except PipelineError as err:
        raise SystemExit(f"{run}: {err}") from None


def summary(run: str | Path) -> dict:
    """A run folder's summary.json with its measured costs merged in (see :func:`run_files`)."""
    return run_files(run).summary


def infer_accuracy(s: dict) -> tuple[float, float]:
    """(test mean, std) in % as `pipeline infer` answers: a ladder with its stored exit policies,
    any other arch with its head."""
    acc = "exit_test_acc" if s.get("exit_test_acc_mean") is not None else "test_acc"
    return pct(s[f"{acc}_mean"]), pct(s[f"{acc}_std"])


def pct(x: float | None) -> float | None:
    return None if x is None else round(100 * float(x), 2)


def write(out: str | Path, table: dict) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(table, indent=2) + "\n")
    print(f"wrote {out}")


def fmt(x, digits: int = 2, unit: str = "") -> str:
    """A number as the page shows it; None as 'not measured'."""
    if x is None:
        return "not measured"
    return f"{x:,.{digits}f}{unit}"


def mean_std(mean, std) -> str:
    return fmt(mean) if std is None else f"{fmt(mean)} ± {fmt(std)}"


def seeds_text(seeds) -> str:
    seeds = list(seeds or [])
    if seeds and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))
