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

from pipeline.core.graph import load_graph
from pipeline.core.options import cli_fields, command, config_file_name, save_flags
from pipeline.graph_import import ImportConfig
from pipeline.graph_subset import SubsetConfig
from pipeline.graph_summary import CheckConfig
from pipeline.graph_synth import SynthConfig
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
                hidden_channels=64, num_layers=2, sampler="rwr", fanout=5, hops=2, num_walks=4, walk_length=3,
                restart_p=0.3, epochs=7, patience=3, lr=0.01, weight_decay=0.0, dropout=0.1,
                batch_size=8, num_threads=1, overwrite=True, dist_timeout=9.0, memory_budget=2 << 30),
    TrainConfig(cache=Path("c.zarr"), out=Path("r"), rungs=(0, 3, 6), rung_weights=(0.0, 0.5, 1.0), no_cache=True, rung_grad="joint",
                depth="full", gnn="gat", temperature=0.5),
    TrainConfig(cache=Path("c.zarr"), out=Path("r"), loss="last-head", standardize=True, readout="ego", init=Path("old"),
                rung_activation="elu", rung_norm="none",
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
    CheckConfig(graph="citeseer", json_path=Path("s.json")),
    ImportConfig(nodes=Path("n.csv"), edges=Path("e.tsv"), out=Path("g"), id_col="pid", text_col="body", label_col="y",
                 split_col="part", src_col="a", dst_col="b", edges_header=False, id_type="string", nodes_format="csv",
                 edges_format="tsv", overwrite=True),
    SubsetConfig(graph="cora", out=Path("g"), nodes=30, seed=2, overwrite=True),
    SynthConfig(out=Path("g"), nodes=50, classes=3, seed=1, homophily=0.5, avg_degree=2.0, text_words="40", check=True,
                overwrite=True),
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
    assert saved["format_version"] == flags["format_version"] == 1
    other = tmp_path / "other_version.json"  # a saved config of another format version does not replay
    other.write_text(json.dumps({**flags, "format_version": 2}))
    res = cli("train", "--config", other, "--out", tmp_path / "r3")
    assert (res.exit_code, res.stderr) == (2, f"Error: {other}: format version 2, this version of the pipeline reads 1; save it anew: "
                                              f"run `pipeline train` with its flags on this version of the pipeline, "
                                              f"or write the config file by hand\n"), res.output
    assert not (tmp_path / "r3").exists()
    assert cli("train", "--config", run1 / config_file_name("train"), "--out", run2).exit_code == 0
    def untimed(run: Path) -> list[dict]:  # wall times differ between two runs, nothing else may
        per_seed = json.loads((run / "summary.json").read_text())["per_seed"]
        return [{k: v for k, v in seed.items() if not k.endswith("_s")} for seed in per_seed]

    assert untimed(run1) == untimed(run2) and len(untimed(run1)) == 2


def test_datasets_commands_replay_end_to_end(tmp_path, cli):
    """The flags import, subset and synth save in their graph folder rebuild the same graph."""
    (tmp_path / "n.csv").write_text("pid,text,label\na,first text,x\nb,second text,y\nc,third text,x\n")
    (tmp_path / "e.tsv").write_text("a\tb\nb\tc\n")
    made = {
        "import": ["datasets", "import", tmp_path / "n.csv", tmp_path / "e.tsv", "--id-col", "pid", "--no-edges-header"],
        "subset": ["datasets", "subset", "cora", "--nodes", "20", "--seed", "1"],
        "synth": ["datasets", "synth", "--nodes", "30", "--classes", "3", "--text-words", "20"],
    }
    for name, args in made.items():
        first, second = tmp_path / f"{name}1", tmp_path / f"{name}2"
        assert cli(*args, first).exit_code == 0
        flags = json.loads((first / config_file_name(f"datasets_{name}")).read_text())
        assert flags["out"] == str(first)
        (tmp_path / f"{name}.json").write_text(json.dumps({**flags, "out": str(second)}))  # positionals too
        result = cli("datasets", name, "--config", tmp_path / f"{name}.json")
        assert result.exit_code == 0, result.output
        assert load_graph(first).fingerprint == load_graph(second).fingerprint, name


def test_every_help_text_is_shown_verbatim():
    """Help texts are plain text: a bracketed part like ``[z_v || ...]`` must not vanish as rich markup."""
    bracketed = [(cls, cli.help) for cls in {type(c) for c in CONFIGS} for _, cli in cli_fields(cls) if "[" in cli.help]
    assert bracketed, "no help text with brackets left to check"
    for cls, text in bracketed:
        app = typer.Typer()
        app.command()(command(cls, lambda config: None))
        shown = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "4000", "TERMINAL_WIDTH": "4000"}).output
        assert " ".join(text.split()) in " ".join(shown.split()), (cls.__name__, text)


def test_command_list_shows_each_first_sentence_on_its_own():
    """``pipeline --help`` lists each command by its help's first sentence, not the whole paragraph."""
    from pipeline.cli import app, summary

    assert summary("Do this: a, b.\nThen `that` (c.d) too.\n\nMore.") == "Do this: a, b."
    assert summary("One line, no stop") == "One line, no stop"
    shown = " ".join(CliRunner().invoke(app, ["--help"], env={"COLUMNS": "4000", "TERMINAL_WIDTH": "4000"}).output.split())
    assert "per-layer Zarr cache." in shown and "Writes predictions.parquet" not in shown, shown
