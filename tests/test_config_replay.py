"""Every option is declared once (on the config dataclass) and every saved config replays.

``<command>_config.json`` holds the flags of a run; ``--config`` of that file must rebuild the
same config. Checked for every generated command through its real command line (the runner
captures the config instead of running), and end to end for encode and train.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from pipeline.core.options import cli_fields, command, config_file_name, save_flags
from pipeline.main_job import MainJobConfig
from pipeline.report.run import ReportConfig
from stage1_encode.bench import BenchConfig as EncodeBenchConfig
from stage1_encode.config import EncodeConfig
from stage2_train.bench import BenchConfig as TrainBenchConfig
from stage2_train.bench_memory import MemoryBenchConfig
from stage2_train.config import TrainConfig
from stage3_infer.config import BenchConfig as InferBenchConfig
from stage3_infer.config import InferConfig

# One config per command, every flag away from its default where it has one.
CONFIGS = [
    EncodeConfig(graph="citeseer", out=Path("c.zarr"), model="minilm-l6", layers="0,3,6", max_length=64, batch_tokens=512,
                 pooling="last", num_shards=2, shard_id=1, dtype="float32", storage_dtype="float32", device="cpu",
                 block_size=64, overwrite=True, trust_remote_code=True, backend="vllm"),
    TrainConfig(cache=Path("c.zarr"), out=Path("r"), arch="gcn", split="planetoid_public", seeds=(1, 2), layer=3,
                hidden_channels=64, gnn="gat", num_layers=2, sampler="rwr", fanout=5, hops=2, num_walks=4, walk_length=3,
                restart_p=0.3, epochs=7, patience=3, lr=0.01, weight_decay=0.0, dropout=0.1, temperature=0.5,
                batch_size=8, num_threads=1, overwrite=True, dist_timeout=9.0, memory_budget=2 << 30),
    TrainConfig(cache=Path("c.zarr"), out=Path("r"), rungs=(0, 3, 6), rung_weights=(0.0, 0.5, 1.0), no_cache=True),
    TrainConfig(cache=Path("c.zarr"), out=Path("r"), loss="last-head", standardize=True, readout="ego", init=Path("old"),
                dtype="bfloat16", allow_dtype_mismatch=True, no_cache=True),
    EncodeConfig(graph="cora", out=Path("new.zarr"), reuse=Path("old.zarr"), storage_dtype="int8"),
    InferConfig(checkpoint=Path("r"), out=Path("p"), exit="none", batch_tokens=512, dtype="float32",
                allow_dtype_mismatch=True, new_only=Path("old.zarr")),
    InferConfig(checkpoint=Path("r"), out=Path("p"), exit="confidence:0.9", split="val", batch_size=4,
                cache_neighbours=False, model="minilm-l6", seed=2, max_targets=5),
    InferConfig(checkpoint=Path("r"), out=Path("p"), node_ids=Path("ids.txt"), nodes=Path("n.parquet"), edges=Path("e.parquet")),
    MainJobConfig(dataset="citeseer", model="minilm-l6", out=Path("o"), max_length=16, layers="all", split="column",
                  seeds=(0, 3), epochs=5, baselines=("gcn",), exit="none", force=True),
    MainJobConfig(baselines=()),
    ReportConfig(run_dirs=[Path("a"), Path("b")], out=Path("rep")),
    EncodeBenchConfig(graph="citeseer", model="minilm-l6", limit=3, max_length=8, batch_tokens=64, layers="all",
                      device="cpu", json_path=Path("b.json"), backend="vllm"),
    TrainBenchConfig(graph="cora", model="minilm-l6", cache=Path("c.zarr"), epochs_uncached=2, max_batches_uncached=None,
                     epochs=3, seeds=(0, 1), out=Path("bt"), json_path=Path("b.json"), num_threads=1),
    MemoryBenchConfig(cache=Path("c.zarr"), memory_budget=1 << 20, epochs=2, batch_size=8, seed=1, fanout=3, readahead=0,
                      num_threads=2, json_path=Path("m.json")),
    InferBenchConfig(checkpoint=Path("r"), json_path=Path("b.json"), max_targets=4, batch_size=2, device="cpu", repeats=3),
]


def replay(config, path: Path):
    """Build the command of ``type(config)``, run it with ``--config path``, return the config it built."""
    built = []
    app = typer.Typer()
    app.command("cmd")(command(type(config), built.append))

    @app.callback()
    def _root() -> None:
        pass

    result = CliRunner().invoke(app, ["cmd", "--config", str(path)])
    assert result.exit_code == 0, result.output
    return built[0]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__module__ + "." + type(c).__name__)
def test_saved_flags_replay_to_the_same_config(config, tmp_path):
    path = tmp_path / "saved.json"
    save_flags(path, config)
    again = replay(config, path)
    assert again == config


def test_every_flag_is_declared_once_on_its_dataclass():
    """No config class declares the same flag twice, and every command's flags come from fields."""
    for cls in {type(c) for c in CONFIGS}:
        flags = [cli.flag_name(f.name) for f, cli in cli_fields(cls) if not cli.argument]
        assert len(flags) == len(set(flags)), cls
        assert set(flags) <= {"--" + f.name.replace("_", "-") for f in fields(cls)} | {"--json"}, cls


def test_encode_and_train_replay_end_to_end(tmp_path, write_graph, cli):
    """The saved flags of a real encode and a real train reproduce the same cache and run."""
    nodes = {"node_id": list(range(12)), "text": [f"paper {i} on {'graphs' if i % 2 else 'language'}" for i in range(12)],
             "label": ["a" if i % 2 else "b" for i in range(12)], "split": ["train"] * 6 + ["val"] * 3 + ["test"] * 3}
    graph = write_graph(nodes, {"src": list(range(11)), "dst": list(range(1, 12))})
    first = tmp_path / "c1.zarr"
    res = cli("encode", graph, "--out", first, "--model", "minilm-l6", "--max-length", "8", "--block-size", "8", "--device", "cpu")
    assert res.exit_code == 0, res.output
    saved = json.loads((first / config_file_name("encode")).read_text())
    assert saved["max-length"] == 8 and saved["graph"] == str(graph)
    second = tmp_path / "c2.zarr"
    assert cli("encode", "--config", first / config_file_name("encode"), "--out", second).exit_code == 0
    assert (first / "states" / "c" / "0" / "0" / "0").read_bytes() == (second / "states" / "c" / "0" / "0" / "0").read_bytes()

    run1, run2 = tmp_path / "r1", tmp_path / "r2"
    res = cli("train", first, "--out", run1, "--epochs", "2", "--hidden-channels", "8", "--seeds", "0,1")
    assert res.exit_code == 0, res.output
    flags = json.loads((run1 / config_file_name("train")).read_text())
    assert flags["seeds"] == "0,1" and flags["hidden-channels"] == 8 and "model" not in flags  # flags only
    assert cli("train", "--config", run1 / config_file_name("train"), "--out", run2).exit_code == 0
    def untimed(run: Path) -> list[dict]:  # wall times differ between two runs, nothing else may
        per_seed = json.loads((run / "summary.json").read_text())["per_seed"]
        return [{k: v for k, v in seed.items() if not k.endswith("_s")} for seed in per_seed]

    assert untimed(run1) == untimed(run2) and len(untimed(run1)) == 2
