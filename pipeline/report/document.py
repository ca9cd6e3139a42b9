"""The Markdown being written: lines, figures placed next to it, and the list of what is missing."""

from __future__ import annotations

import re
from pathlib import Path


ARCH_ORDER = {"ladder": 0, "mlp": 1, "gcn": 2, "sage": 3, "lora": 4, "ia3": 5, "prefix": 6, "finetune": 7}
CREATE = {
    "cache": "`pipeline encode GRAPH --out CACHE_DIR`",
    "run": "`pipeline train CACHE_DIR --out RUN_DIR` (add `--arch mlp|gcn|sage` for baselines)",
    "ladder": "`pipeline train CACHE_DIR --out RUN_DIR --arch ladder`",
    "infer": "`pipeline infer --checkpoint RUN_DIR --out INFER_DIR`",
    "encode": "`pipeline bench encode GRAPH --json RUN_DIR/bench_encode.json`",
    "train": "`pipeline bench train GRAPH --json RUN_DIR/bench_train.json`",
    "bench_infer": "`pipeline bench infer --checkpoint RUN_DIR --json RUN_DIR/bench_infer.json`",
}


def pct(v, std=None) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


class Document:
    """Collects Markdown lines and the figures written next to it."""

    def __init__(self, out: Path, base: Path, out_final: Path | None = None):
        self.out, self.base = out, base  # out: where files are written now (a temp folder)
        self.out_final = out_final or out  # where they will be once the report is complete
        self.lines: list[str] = []
        self.figures: list[Path] = []
        self.missing: list[str] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def rel(self, path: Path) -> str:
        """A path as the reader knows it: relative to the report's RUN_DIR(s) when inside them."""
        try:
            return str(Path(path).resolve().relative_to(self.base.resolve())) or "."
        except ValueError:
            return str(path)

    def figure(self, make, name: str, *args, alt: str) -> None:
        path = make(*args, self.out / name)
        self.figures.append(path)
        self.add("", f"![{alt}]({name})", "")

    def slug(self, path: Path) -> str:
        """A file-name part for ``path``: its relative path, or its own name when it is the RUN_DIR."""
        rel = self.rel(path)
        return re.sub(r"[^A-Za-z0-9]+", "-", Path(path).resolve().name if rel == "." else rel).strip("-") or "run"

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.add("| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|")
        self.add(*("| " + " | ".join(str(c) for c in r) + " |" for r in rows))
        self.add("")
