"""``run(ReportConfig)``: find the artifacts -> write figures and ``report.md`` -> move into place.

The report is written into a temporary sibling folder and renamed at the end, so a failure
leaves no half-written report; an earlier report in the same folder is replaced.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

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
        out = self.out_dir if self.run_dirs else None
        if out is not None and out.exists():
            if not out.is_dir():
                errs.add(f"--out {out}: is a file; give a folder")
            elif not is_report_folder(out):
                errs.add(f"--out {out}: exists and holds other files than an earlier report (report.md, *.png); "
                         "choose another --out (nothing was deleted)")
        errs.raise_if_any()
        return self


def is_report_folder(path: Path) -> bool:
    """Empty, or only an earlier report (report.md, its flags and PNGs): safe to replace."""
    return all(p.is_file() and (p.name in (REPORT_FILE, FLAGS_FILE) or p.suffix == ".png") for p in path.iterdir())


def _check_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PipelineError("the report needs matplotlib: pip install 'engine-pipeline[report]' (or pip install matplotlib)") from None


def run(config: ReportConfig) -> Path:
    """Write the report of ``config.run_dirs``; returns the path of ``report.md``."""
    from pipeline.report.collect import collect
    from pipeline.report.markdown import build

    # --- setup
    config.validate()
    _check_matplotlib()
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

    # --- write into a temporary sibling
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        doc = build(found, tmp, base, out_final=out)
        (tmp / REPORT_FILE).write_text("\n".join(doc.lines).rstrip() + "\n")
        save_flags(tmp / FLAGS_FILE, config)
        # --- move into place (an earlier report there is replaced)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"report: {out / REPORT_FILE} ({len(doc.figures)} figures, {len(dict.fromkeys(doc.missing))} missing piece(s) listed)")
    return out / REPORT_FILE


def write_report(run_dirs: list[Path], out: Path | None = None) -> Path:
    """Write ``report.md`` + PNG figures for ``run_dirs`` (into ``out`` or next to the runs); returns report.md."""
    return run(ReportConfig(run_dirs=list(run_dirs), out=out))
