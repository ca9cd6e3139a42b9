"""Layers: pipeline.core <- stage1_encode <- stage2_train <- stage3_infer <- the app (the rest of
``pipeline``). A module may import its own layer and those below, never one above."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stage1_encode", "stage2_train", "stage3_infer")


def layer_of(module: str) -> int | None:
    """0 core, 1 encode, 2 train, 3 infer, 4 app; None for modules outside the project."""
    top = module.split(".")[0]
    if top == "pipeline":
        # the bare package holds only __version__
        return 0 if module in ("pipeline", "pipeline.__version__") or module.startswith("pipeline.core") else 4
    return {"stage1_encode": 1, "stage2_train": 2, "stage3_infer": 3}.get(top)


def imported_modules(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found += [f"{node.module}.{a.name}" for a in node.names if node.module in ("pipeline", "pipeline.core")]
    return found


def test_no_module_imports_a_layer_above_its_own():
    violations = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            module = ".".join(path.relative_to(REPO).with_suffix("").parts)
            own = layer_of(module)
            for imported in imported_modules(path):
                other = layer_of(imported)
                if other is not None and other > own:
                    violations.append(f"{path.relative_to(REPO)} imports {imported}")
    assert violations == []


def test_layer_rule_catches_an_upward_import(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("from stage3_infer.run import run\nimport pipeline.cli\nfrom pipeline.core import errors\n")
    ups = [m for m in imported_modules(bad) if layer_of(m) > layer_of("stage2_train.loop")]
    assert ups == ["stage3_infer.run", "pipeline.cli"]
