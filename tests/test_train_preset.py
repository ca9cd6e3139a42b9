"""``pipeline train --preset engine``: the ENGINE authors' released settings.

Covers: the resolved config equals the preset's table (stage2_train/presets.py) and the table
docs/design.md documents; a flag given explicitly wins over the preset, on the command line
(even at its own default value) and as a keyword; the dataset comes from the cache's graph or
is named (``engine:cora``), an unknown one is refused; the preset trains on a real cache and
stores the authors' patience-1 exit.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipeline.core.errors import InputError
from stage2_train.config import TrainConfig
from stage2_train.presets import ENGINE

NODES = 45  # the slice tests/test_train_depth.py and test_infer_run.py encode too (shared)
DESIGN = Path(__file__).resolve().parents[1] / "docs" / "design.md"


@pytest.fixture(scope="module")
def cache(cora_cache):
    return cora_cache(NODES, max_length=32, block_size=16)[1]


def _documented() -> dict[str, dict[str, str]]:
    """docs/design.md's preset table: {dataset: {field: value as written}}."""
    text = DESIGN.read_text()
    table = text[text.index("<!-- preset-engine -->"):text.index("<!-- /preset-engine -->")]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.fullmatch(r"`--([a-z-]+)`", cells[0]) if len(cells) >= 4 else None
        if m:
            rows[m.group(1).replace("-", "_")] = {"cora": cells[1].strip("`"), "citeseer": cells[2].strip("`")}
    return {ds: {f: v[ds] for f, v in rows.items() if v[ds] != "-"} for ds in ("cora", "citeseer")}


@pytest.mark.parametrize("dataset", ["cora", "citeseer"])
def test_resolved_config_equals_the_documented_values(cache, tmp_path, dataset):
    cfg = TrainConfig(cache=cache, out=tmp_path / "run", preset=f"engine:{dataset}")
    resolved = {name: getattr(cfg, name) for name in ENGINE[dataset]}
    assert resolved == ENGINE[dataset]
    documented = _documented()[dataset]
    assert set(documented) == set(ENGINE[dataset])
    assert {k: str(v) for k, v in resolved.items()} == {k: str(type(resolved[k])(v)) for k, v in documented.items()}


def test_a_keyword_given_with_the_preset_wins(cache, tmp_path):
    cfg = TrainConfig(cache=cache, out=tmp_path / "run", preset="engine:cora", lr=1e-3, num_layers=1)
    assert (cfg.lr, cfg.num_layers, cfg.rung_norm, cfg.sampler) == (1e-3, 1, "none", "rwr")


def test_the_dataset_comes_from_the_caches_graph_or_is_refused(cache, tmp_path):
    named = tmp_path / "named.zarr"
    named.mkdir()
    (named / "manifest.json").write_text(json.dumps({"graph_source": "citeseer"}))  # a built-in graph by name
    assert TrainConfig(cache=named, out=tmp_path / "a", preset="engine").num_layers == ENGINE["citeseer"]["num_layers"]
    # the slice is a subset: its meta.json has no name, so plain `engine` cannot tell the dataset
    with pytest.raises(InputError) as err:
        TrainConfig(cache=cache, out=tmp_path / "b", preset="engine").validate()
    assert ("--preset engine: the ENGINE authors released settings for cora, citeseer; the cache does not name its graph "
            "(meta.json 'name'). Name the settings to use with --preset engine:DATASET") in str(err.value)
    with pytest.raises(InputError, match=r"--preset engine:arxiv: the ENGINE authors released settings for cora, citeseer; "
                                         r"the cache's graph is named 'arxiv'"):
        TrainConfig(cache=cache, out=tmp_path / "c", preset="engine:arxiv").validate()
    with pytest.raises(InputError, match=r"--preset paper: choose one of engine"):
        TrainConfig(cache=cache, out=tmp_path / "d", preset="paper").validate()
    with pytest.raises(InputError, match=r"^--preset is for --arch ladder; it has no effect with --arch mlp: leave it out$"):
        TrainConfig(cache=cache, out=tmp_path / "e", preset="engine:cora", arch="mlp").validate()


def test_preset_trains_with_explicit_flags_winning_and_stores_the_patience_1_exit(cache, tmp_path, cli):
    out = tmp_path / "run"
    # --rung-norm layer is the flag's own default: given explicitly, it still beats the preset's none
    r = cli("train", cache, "--out", out, "--preset", "engine:cora", "--epochs", "2", "--walk-length", "8",
            "--hidden-channels", "16", "--rung-norm", "layer", "--rungs", "0,3,6", "--num-threads", "1")
    assert r.exit_code == 0, r.output
    flags = json.loads((out / "train_config.json").read_text())
    expected = {**ENGINE["cora"], "epochs": 2, "walk_length": 8, "hidden_channels": 16, "rung_norm": "layer"}
    for name, value in expected.items():
        assert flags[name.replace("_", "-")] == value, name
    assert flags["preset"] == "engine:cora"
    summary = json.loads((out / "summary.json").read_text())
    policy = summary["per_seed"][0]["exit_policy"]
    assert policy["policy"] == "patience:1" and policy["rule"] == "fixed by train --exit"
    assert summary["per_seed"][0]["depth"] == 3  # --depth full: every rung kept
    # replaying the saved flags gives the same resolved config (every value is explicit there)
    again = tmp_path / "again"
    r = cli("train", cache, "--out", again, "--config", out / "train_config.json", "--epochs", "1")
    assert r.exit_code == 0, r.output
    replay = json.loads((again / "train_config.json").read_text())
    assert {k: v for k, v in replay.items() if k not in ("out", "epochs")} == {k: v for k, v in flags.items() if k not in ("out", "epochs")}
