"""``run(ReportConfig)``: find the artifacts -> write figures and ``report.md`` -> move into place.

The report is written into a temporary sibling folder and renamed at the end, so a failure
leaves no half-written report; an earlier report in the same folder is replaced, and nothing
else ever is (the folder carries the ownership marker, kind "report").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core import atomic, ownership
from pipeline.core.errors import ConfigErrors, InputError, PipelineError
from pipeline.core.options import Cli, config_file_name, out_option, save_flags
from pipeline.core.progress import log

REPORT_FILE = "report.md"
FLAGS_FILE = config_file_name("report")


@dataclass
class ReportConfig:
    """``run_dirs``: folders searched recursively; ``out``: the report folder (None: see ``out_dir``)."""

    run_dirs: list[Path] = field(
        default_factory=list, metadata={"cli": Cli("Folders written by the pipeline (searched recursively).", argument=True, metavar="RUN_DIR", required=True)}
    )
    out: Path | None = out_option("report.md and its PNG figures (default: RUN_DIR/report, or report/ in the common parent of several RUN_DIRs)", None)

    def __post_init__(self) -> None:
        self.run_dirs = [Path(p) for p in self.run_dirs]
        self.out = Path(self.out) if self.out is not None else None

    @property
    def out_dir(self) -> Path:
        """Next to the runs: ``RUN_DIR/report``, or ``report`` in the common parent of several RUN_DIRs."""
        if self.out is not None:
            return self.out
        if len(self.run_dirs) == 1:
            return self.run_dirs[0] / "report"
        return Path(os.path.commonpath([str(p.resolve()) for p in self.run_dirs])) / "report"

    def validate(self) -> "ReportConfig":
        errs = ConfigErrors()
        errs.check(bool(self.run_dirs), "RUN_DIR: give at least one folder written by the pipeline")
        for p in self.run_dirs:
            errs.check(p.is_dir(), f"RUN_DIR {p}: no such directory")
        errs.raise_if_any()
        # an earlier report there is replaced (overwrite); the report may lie inside a RUN_DIR
        ownership.claim_output(self.out_dir, "report", "--out", overwrite=True, inputs=self.run_dirs,
                               inside_inputs_ok=True)
        return self


def check_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PipelineError("the report needs matplotlib: pip install matplotlib (a dependency of engine-pipeline: reinstall it)") from None


def run(config: ReportConfig) -> Path:
    """Write the report of ``config.run_dirs``; returns the path of ``report.md``."""
    from pipeline.report.collect import collect
    from pipeline.report.markdown import build

    # --- setup
    config.validate()
    check_matplotlib()
    found = collect(config.run_dirs)
    if found.empty:
        where = ", ".join(str(p) for p in config.run_dirs)
        detail = f" ({'; '.join(found.problems)})" if found.problems else ""
        raise InputError(
            f"RUN_DIR {where}: no pipeline artifacts found{detail}; looked for encode caches (manifest.json + zarr.json), "
            "training runs (summary.json + metrics.jsonl), infer outputs (predictions.parquet) and bench*.json"
        )
    out = config.out_dir
    # paths in the report are shown relative to the RUN_DIR (or the common parent of several)
    base = Path(os.path.commonpath([str(p.resolve()) for p in config.run_dirs]))

    # --- write into a temporary sibling, then move into place (an earlier report there is replaced)
    with atomic.StagedFolder(out) as staged:
        doc = build(found, staged.path, base, out_final=out)
        (staged.path / REPORT_FILE).write_text("\n".join(doc.lines).rstrip() + "\n")
        save_flags(staged.path / FLAGS_FILE, config)
        ownership.write_marker(staged.path, "report")
        staged.commit(ownership.replacer("report", "--out", True))
    log(f"report: {out / REPORT_FILE} ({len(doc.figures)} figures, {len(dict.fromkeys(doc.missing))} missing piece(s) listed)")
    return out / REPORT_FILE


def write_report(run_dirs: list[Path], out: Path | None = None) -> Path:
    """Write ``report.md`` + PNG figures for ``run_dirs`` (into ``out`` or next to the runs); returns report.md."""
    return run(ReportConfig(run_dirs=list(run_dirs), out=out))
