"""What a fresh `pip install` of pyproject.toml gets: a Python floor the code runs on,
dependency floors that have the APIs the code calls, the report's plotting library, a licence."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def floor(name: str) -> Version:
    for line in PROJECT["dependencies"]:
        req = Requirement(line)
        if req.name == name:
            return min(Version(s.version) for s in req.specifier if s.operator == ">=")
    raise AssertionError(f"{name} is not a dependency")


def test_python_floor_has_tomllib():
    assert "tomllib" in (ROOT / "pipeline/core/config_file.py").read_text()
    assert Requirement(f"x{PROJECT['requires-python']}").specifier == Requirement("x>=3.11").specifier


def test_transformers_floor_has_from_pretrained_dtype():
    # from_pretrained(dtype=...) (stage1_encode/models.py) arrived in transformers 4.56.0 (PR #39782)
    assert "from_pretrained(" in (ROOT / "stage1_encode/models.py").read_text()
    assert floor("transformers") >= Version("4.56")


def test_pipeline_run_has_matplotlib_by_default():
    assert floor("matplotlib") >= Version("3.8")


def test_license_file_matches_pyproject():
    assert PROJECT["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")
