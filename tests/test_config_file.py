"""`--config FILE`: YAML/TOML parsing, errors, and the saved resolved configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.core.config_file import read_config_file, save_resolved_config
from pipeline.core.errors import InputError


def test_yaml_and_toml(tmp_path):
    (tmp_path / "a.yaml").write_text("nodes: 5\nseed: 1\nname: x\nseeds: [0, 1]\n")
    (tmp_path / "a.yml").write_text("")
    (tmp_path / "a.toml").write_text('nodes = 5\nseed = 1\nname = "x"\nseeds = [0, 1]\n')
    want = {"nodes": 5, "seed": 1, "name": "x", "seeds": [0, 1]}
    assert read_config_file(tmp_path / "a.yaml") == want
    assert read_config_file(tmp_path / "a.toml") == want
    assert read_config_file(tmp_path / "a.yml") == {}
    for name in ("a.yaml", "a.toml"):  # an editor's UTF-8 byte order mark is not content
        (tmp_path / f"bom-{name}").write_bytes(b"\xef\xbb\xbf" + (tmp_path / name).read_bytes())
        assert read_config_file(tmp_path / f"bom-{name}") == want


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("missing.yaml", None, "file not found"),
        ("a.ini", "x=1", "unknown extension '.ini'; use .yaml, .yml or .toml"),
        ("a.toml", "nodes = = 1", "cannot parse"),
        ("a.yaml", "a: [1,", "cannot parse"),
        ("a.yaml", "- 1\n- 2\n", "expected a mapping of flag names to values"),
    ],
)
def test_bad_config_files(tmp_path, name, text, message):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(InputError) as err:
        read_config_file(path)
    assert err.value.exit_code == 2
    assert err.value.format_message().startswith(f"--config {path}: {message}")


def test_save_resolved_config(tmp_path):
    path = tmp_path / "pipeline_config.json"
    save_resolved_config(path, {"out": Path("/x/y"), "nodes": 3, "pair": (Path("a"), 1), "nested": {"p": Path("b")}})
    assert json.loads(path.read_text()) == {"out": "/x/y", "nodes": 3, "pair": ["a", 1], "nested": {"p": "b"}, "format_version": 1}


def _text(stderr: str) -> str:
    """Config errors are raised while flags are parsed and shown in typer's error panel."""
    return " ".join(stderr.replace("│", " ").split())


def test_bad_config_through_cli(cli, tmp_path):
    (tmp_path / "c.yaml").write_text("- not a mapping\n")
    result = cli("datasets", "check", "cora", "--config", tmp_path / "c.yaml")
    assert result.exit_code == 2
    assert "expected a mapping of flag names to values" in _text(result.stderr)
    result = cli("datasets", "check", "cora", "--config", tmp_path / "none.toml")
    assert result.exit_code == 2 and "file not found" in _text(result.stderr)
