"""``pipeline report``: the results of runs as ``report.md`` plus PNG figures.

Modules: ``collect`` (find artifacts by their files, read them), ``figures`` (one PNG per
function), ``document``/``markdown``/``quality``/``speed`` (the Markdown sections),
``run`` (``ReportConfig``, ``run``, ``write_report``).
"""

from pipeline.report.run import ReportConfig, run, write_report

__all__ = ["ReportConfig", "run", "write_report"]
