"""docs/results.md's headline tables equal docs/results/*.json (rendered by scripts/results_page.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import results_page  # noqa: E402


def test_page_tables_equal_the_json():
    page = (ROOT / "docs" / "results.md").read_text()
    assert results_page.render(page) == page, "run: python scripts/results_page.py"


def test_every_table_has_its_json_with_settings_and_source():
    for name in results_page.TABLES:
        table = json.loads((ROOT / "docs" / "results" / f"{name}.json").read_text())
        assert table["table"] == name and table["settings"] and table["source"]


def test_a_changed_number_is_caught():
    page = (ROOT / "docs" / "results.md").read_text()
    ladder = json.loads((ROOT / "docs" / "results" / "accuracy.json").read_text())["rows"][0]["ladder"]
    cell = f"| {ladder['test_mean']:.2f} ± {ladder['test_std']:.2f} |"
    assert cell in page
    changed = cell.replace(f"{ladder['test_mean']:.2f}", f"{ladder['test_mean'] + 0.01:.2f}")
    assert results_page.render(page.replace(cell, changed)) == page
