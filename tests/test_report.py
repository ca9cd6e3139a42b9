"""``pipeline report``: sections, valid PNGs, any subset of stages, problems reported not fatal.

The main artifacts come from a real tiny run (``pipeline datasets subset`` -> ``encode`` with
MiniLM -> ``train`` ladder and mlp -> ``infer``); the odd cases (incomplete cache, unlabelled
targets) are written with the stages' own writers (``CacheWriter``, ``write_outputs``). The
bench JSONs carry the keys the ``pipeline bench ... --json`` commands write (running the
benches here would take minutes), so a format change in a stage shows up here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.core.ownership import MARKER
from pipeline.core.bench_json import write_bench
from pipeline.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECTIONS = [
    "## What was found",
    "## Accuracy: G-Ladder vs same-encoder baselines",
    "## Cost against accuracy",
    "## Exit heads over depth, with gates",
    "## Training curves",
    "## Early exit: accuracy against LLM layers run",
    "## Benchmarks",
    "## Missing or unreadable",
]
ALL_FIGURES = {
    "accuracy.png", "cost_accuracy.png", "heads_checkpoint.png", "training_checkpoint.png", "training_baselines-mlp.png",
    "early_exit_tradeoff.png", "exit_layers.png", "bench-encode.png", "bench-train.png", "bench-infer.png",
}


# --------------------------------------------------------------------- artifacts, as the stages write them
def make_cache(path: Path, num_nodes=40, layers=(0, 2, 4, 6), hidden=8, complete=True):
    from stage1_encode.cache.geometry import block_range, num_blocks
    from stage1_encode.cache.manifest import new_manifest, text_hashes
    from stage1_encode.cache.writer import CacheWriter
    manifest = new_manifest(
        model="minilm-l6", model_path="minilm-l6", weights_sha256="ab" * 32, tokenizer="bert", max_length=128,
        pooling="mean", layers=list(layers), compute_dtype="float32", storage_dtype="float16", graph_source="cora",
        graph_fingerprint="f" * 64, num_nodes=num_nodes, hidden_size=hidden, block_nodes=16, num_shards=1,
        batch_tokens=4096, backend="hf",
    )
    ids = np.arange(num_nodes)
    w = CacheWriter.create_or_open(path, manifest, ids, {"graph": "cora"}, text_hashes([str(i) for i in ids]))
    rng = np.random.default_rng(0)
    blocks = range(num_blocks(num_nodes, 16)) if complete else [0]
    for b in blocks:
        s, e = block_range(b, num_nodes, 16)
        w.write_block(b, rng.standard_normal((e - s, len(layers), hidden)).astype(np.float32), ids)
    w.finish()
    return path

def make_infer(path: Path, policy="patience:1", n=60, layers=(0, 2, 4, 6), labelled=True, seed=0):
    from stage3_infer.predictions import Predictions, summarize, write_outputs
    rng = np.random.default_rng(seed)
    rung = rng.choice(len(layers), size=n, p=[0.1, 0.45, 0.3, 0.15])
    labels = rng.integers(0, 3, n) if labelled else -np.ones(n, dtype=np.int64)
    pred = np.where(rng.random(n) < 0.8, labels.clip(0), rng.integers(0, 3, n))
    p = Predictions(np.arange(n), pred, rng.random(n), rung, np.asarray(layers)[rung], labels, ["a", "b", "c"])
    evals = int(np.asarray(layers)[rung].sum())
    s = summarize(p, policy=policy, layer_evals=evals, full_depth_evals=n * layers[-1], wall_time_s=1.5,
                  extra={"checkpoint": "x", "seed": 0, "model": "minilm-l6", "rung_layers": list(layers)})
    write_outputs(path, p, s)
    return path

def bench_encode():
    """The keys ``pipeline bench encode --json`` writes (stage1_encode/bench.py)."""
    return {"graph": "cora", "model": "minilm-l6", "device": "cpu", "dtype": "float32", "texts": 256, "max_length": 256,
            "layers": [0, 1, 2, 3, 4, 5, 6], "tokens": 40000, "padding_fraction": 0.05, "texts_per_s": 81.3,
            "tokens_per_s": 12700.0, "naive_texts_per_s": 20.4, "naive_tokens_per_s": 3187.0, "speedup_vs_naive": 3.99,
            "matmul_flops_per_s": 1.0e11, "model_flops_per_s": 4.2e10, "flops_fraction": 0.42, "bytes_per_node": 5376,
            "reference_bytes_per_node": 10752, "bytes_ratio_vs_reference": 0.5}


def bench_train():
    acc = {"ladder": (0.86, 0.01), "mlp": (0.74, 0.02), "gcn": (0.84, 0.012), "sage": (0.83, 0.015)}
    return {"graph": "cora", "cache": "c", "model": "minilm-l6", "layers": [0, 2, 4, 6], "epoch_s_cached": 0.42,
            "epoch_s_uncached": 31.7, "caching_speedup": 75.5, "uncached_extrapolated": True, "uncached_batches_timed": 8,
            "batches_per_epoch": 26, "first_batch_loss_cached": 4.4, "first_batch_loss_uncached": 4.4, "seeds": [0, 1],
            "accuracy": {a: {"test_acc_mean": m, "test_acc_std": s, "val_acc_mean": m + 0.01} for a, (m, s) in acc.items()},
            **{f"{a}_test_acc_mean": m for a, (m, s) in acc.items()}}

def bench_infer():
    rows = {"none": (0.85, 1.0, 1.0), "patience:1": (0.845, 2.9, 0.38), "patience:2": (0.85, 1.9, 0.55),
            "confidence:0.9": (0.848, 2.2, 0.47), "confidence:0.75": (0.84, 3.4, 0.31)}
    return {k: {"accuracy": a, "rel_drop": (0.85 - a) / 0.85, "speedup": sp, "layer_fraction": lf, "wall_time_s": 10 / sp,
                "val_accuracy": a, "val_rel_drop": 0.0, "chosen_on_val": k == "patience:1", "num_test": 1000, "num_val": 500}
            for k, (a, sp, lf) in rows.items()}

# --------------------------------------------------------------------- helpers
def invoke(*args):
    """``pipeline report ARGS`` in-process."""
    from pipeline.cli import app

    return CliRunner().invoke(app, ["report", *(str(a) for a in args)])


def assert_valid_png(path: Path) -> None:
    import matplotlib.image as mpimg

    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 10_000, (path, len(data))
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 600, (path, img.shape)


def figures_linked(md: str) -> set[str]:
    import re

    return set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    """A real tiny run: 40 Cora nodes encoded by MiniLM, a 2-seed ladder and an mlp baseline
    (3 epochs), early-exit inference on 8 test nodes; plus the three bench JSONs."""
    from pipeline.cli import app

    root = tmp_path_factory.mktemp("runs") / "demo"
    runner = CliRunner()
    split = ("--split", "random:0.4,0.2,0.4", "--epochs", "3", "--seeds", "0,1", "--hidden-channels", "16")
    for args in (
        ("datasets", "subset", "cora", root / "graph", "--nodes", "40"),
        ("encode", root / "graph", "--model", "minilm-l6", "--out", root / "cache.zarr", "--max-length", "32", "--layers", "0,3,6"),
        ("train", root / "cache.zarr", "--out", root / "checkpoint", *split),
        ("train", root / "cache.zarr", "--out", root / "baselines" / "mlp", "--arch", "mlp", *split),
        ("infer", "--checkpoint", root / "checkpoint", "--out", root / "infer", "--max-targets", "8"),
    ):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, (args, result.output)
    for kind, data in (("encode", bench_encode()), ("train", bench_train()), ("infer", bench_infer())):
        write_bench(root / f"bench_{kind}.json", kind, data)
    return root


# --------------------------------------------------------------------- tests
def test_full_run_has_every_section_and_valid_figures(full_run):
    result = invoke(full_run)
    assert result.exit_code == 0, result.output
    out = full_run / "report"
    md = (out / "report.md").read_text()
    assert [line for line in md.splitlines() if line.startswith("## ")] == SECTIONS
    assert {p.name for p in out.iterdir()} == ALL_FIGURES | {"report.md", "report_config.json", MARKER}
    assert figures_linked(md) == ALL_FIGURES
    for name in sorted(ALL_FIGURES):
        assert_valid_png(out / name)
    assert "Nothing: every stage and benchmark is present." in md
    # the command prints where everything is, and the closing note names the files
    assert result.stdout.splitlines() == [f"report: {out / 'report.md'}"] + [f"figure: {out / n}" for n in sorted(ALL_FIGURES)]
    assert md.rstrip().splitlines()[-1].startswith(f"Files in `{out}`: `report.md` and 10 figure(s): `accuracy.png`, `cost_accuracy.png`, ")

    # the numbers of the real run come through exactly
    from stage2_train.checkpoint import read_run

    ladder = read_run(full_run / "checkpoint").summary  # summary.json with cost.json merged in
    mlp = json.loads((full_run / "baselines" / "mlp" / "summary.json").read_text())
    def row(s, states):
        return (f"| graph | minilm-l6 | {states} | {100 * s['test_acc_mean']:.2f} ± {100 * s['test_acc_std']:.2f} | "
                f"{100 * s['val_acc_mean']:.2f} ± {100 * s['val_acc_std']:.2f} | 2 |")
    assert row(ladder, "**ladder** | [0, 3, 6]") in md and row(mlp, "mlp | [6]") in md
    assert "| cora | minilm-l6 | sage | [6] | 83.00 ± 1.50 | 84.00 | 2 | `bench_train.json` |" in md  # only bench train has sage
    for i, (head, gate) in enumerate(zip(ladder["heads"], ladder["gates_mean"])):
        assert (f"| {i} | {head['layer']} | {100 * head['val_acc_mean']:.2f} ± {100 * head['val_acc_std']:.2f} | "
                f"{100 * head['test_acc_mean']:.2f} ± {100 * head['test_acc_std']:.2f} | {gate:.3f} |") in md
    infer = json.loads((full_run / "infer" / "summary.json").read_text())
    assert (f"| `infer` | {infer['policy']} | {100 * infer['accuracy']:.2f} | – | – | {100 * infer['layer_fraction']:.2f} | "
            f"{infer['mean_exit_layer']:.1f} | 8 |") in md
    assert "Dashed: fixed depth `layer:I` (every node exits at rung I), the test accuracy of each exit head" in md
    assert "| `bench_infer.json` | patience:1 (chosen on val) | 84.50 | 0.59 | 2.90x | 38.00 | – | 1000 |" in md
    assert "| 0.42 | 31.70 (extrapolated from 8 of 26 batches) | 75.5x |" in md
    assert "| 81.3 | 20.4 | 3.99x | 42.00 | 5,376 | 10,752 |" in md
    # the cost ledger: the cache's recorded encode time plus training, per seed
    from pipeline.report.cost import _count, _seconds

    c = ladder["cost"]
    manifest = json.loads((full_run / "cache.zarr" / "manifest.json").read_text())
    assert c["encode_s"] == manifest["encode_s"] > 0 and c["total_s"] == c["encode_s"] + c["train_s_mean"]
    assert (f"| graph | **ladder** | {100 * ladder['test_acc_mean']:.2f} ± {100 * ladder['test_acc_std']:.2f} | 2 | "
            f"{_count(c['trainable_params'])} | {_count(c['backward_params'])} | {c['peak_memory_bytes'] / 2**20:.0f} | 3,3 | "
            f"{_seconds(c['epoch_s_mean'])} | {_seconds(c['train_s_mean'])} | {_seconds(c['encode_s'])} | – | "
            f"{_seconds(c['total_s'])} | `checkpoint` |") in md


def test_rerun_replaces_the_report_and_several_run_dirs(full_run, tmp_path):
    out = tmp_path / "rep"
    assert invoke(full_run / "infer", full_run / "baselines", "--out", out).exit_code == 0
    md = (out / "report.md").read_text()
    policy = json.loads((full_run / "infer" / "summary.json").read_text())["policy"]  # the run's choice on validation
    assert f"| infer output | `infer` | policy {policy}, 8 nodes," in md  # relative to the common parent
    assert "| training run | `baselines/mlp` | mlp on graph (minilm-l6), seeds [0, 1]," in md
    assert sorted(p.name for p in out.iterdir()) == [MARKER,
        "accuracy.png", "cost_accuracy.png", "early_exit_tradeoff.png", "exit_layers.png", "report.md", "report_config.json", "training_baselines-mlp.png"]
    (out / "stale.png").write_bytes(PNG_MAGIC)
    assert invoke(full_run / "infer", "--out", out).exit_code == 0  # a second report replaces the first
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "early_exit_tradeoff.png", "exit_layers.png", "report.md", "report_config.json"]
    md = (out / "report.md").read_text()
    assert f"| infer output | `.` | policy {policy}, 8 nodes," in md and "`baselines/mlp`" not in md
    assert not list(tmp_path.glob(".rep.tmp-*"))


def test_cache_alone_says_what_is_missing(tmp_path):
    run = tmp_path / "run"
    make_cache(run / "cache.zarr")
    path = write_report([run])
    assert path == run / "report" / "report.md"
    md = path.read_text()
    assert [line for line in md.splitlines() if line.startswith("## ")] == SECTIONS
    assert "| encode cache | `cache.zarr` | minilm-l6 on cora, 40 nodes, states [0, 2, 4, 6], H=8, float16," in md
    for line in (
        "_Missing: no training run found; `pipeline train CACHE_DIR --out RUN_DIR` (add `--arch mlp|gcn|sage` for baselines) creates one._",
        "_Missing: no G-Ladder training run; `pipeline train CACHE_DIR --out RUN_DIR --arch ladder` creates one._",
        "- infer output (exit histogram, trade-off points): `pipeline infer --checkpoint RUN_DIR --out INFER_DIR`",
        "- bench encode figures: `pipeline bench encode GRAPH --json RUN_DIR/bench_encode.json`",
    ):
        assert line in md, line
    assert sorted(p.name for p in path.parent.iterdir()) == [MARKER, "report.md", "report_config.json"]
    assert md.rstrip().splitlines()[-1] == f"Files in `{run / 'report'}`: `report.md` and 0 figure(s): none."


def test_checkpoint_without_infer(full_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(full_run / "checkpoint", run / "checkpoint")
    path = write_report([run])
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == [MARKER, "accuracy.png", "cost_accuracy.png", "heads_checkpoint.png", "report.md", "report_config.json", "training_checkpoint.png"]
    md = path.read_text()
    assert "_Missing: no infer output or infer benchmark; `pipeline infer --checkpoint RUN_DIR --out INFER_DIR` or" in md
    assert "- encode cache: none under the given folder(s); `pipeline encode GRAPH --out CACHE_DIR`" in md
    assert "- same-encoder baselines: `pipeline train CACHE_DIR --arch mlp|gcn|sage --out DIR` (or `pipeline bench train`)" in md


def test_broken_pieces_are_listed_not_fatal(tmp_path):
    run = tmp_path / "run"
    make_cache(run / "cache.zarr", complete=False)
    make_infer(run / "infer", labelled=False)
    (run / "half").mkdir()
    (run / "half" / "summary.json").write_text("{not json")
    (run / "half" / "metrics.jsonl").write_text("")
    (run / "bench_other.json").write_text(json.dumps({"hello": 1}))
    result = invoke(run)
    assert result.exit_code == 0, result.output
    md = (run / "report" / "report.md").read_text()
    assert "INCOMPLETE: 1/3 blocks" in md
    assert "is incomplete (2 blocks missing): complete it with `pipeline encode cora --out " in md
    assert f"- could not read {run / 'half'}: training run could not be read (checkpoint {run / 'half'}: missing checkpoint.json" in md
    assert f"- could not read {run / 'bench_other.json'}: benchmark JSON could not be read (not a `pipeline bench encode|train|train-memory|infer --json` file (no known \"kind\" with \"figures\"))" in md
    assert "_No labelled targets among the infer outputs: no accuracy to plot._" in md
    assert sorted(p.name for p in (run / "report").iterdir()) == [MARKER, "exit_layers.png", "report.md", "report_config.json"]


def test_bench_json_of_another_format_version_is_refused(tmp_path):
    """A bench JSON carries format_version 1; one of another version is refused (exit 2) by its
    reader, and the report lists it as a piece it could not read."""
    from pipeline.core.bench_json import read_bench
    from pipeline.core.errors import InputError

    path = write_bench(tmp_path / "bench_train.json", "train", bench_train())
    assert json.loads(path.read_text()) == {"kind": "train", "format_version": 1, "figures": bench_train()}
    path.write_text(json.dumps({"kind": "train", "format_version": 2, "figures": bench_train()}))
    message = f"{path}: format version 2, this version of the pipeline reads 1; rerun `pipeline bench train ... --json {path}`"
    with pytest.raises(InputError) as err:
        read_bench(path)
    assert (err.value.message, err.value.exit_code) == (message, 2)
    result = invoke(tmp_path)  # the folder's only artifact: nothing to report, exit 2 naming it
    assert result.exit_code == 2, result.output
    assert f"{path}: benchmark JSON could not be read ({path}: format version 2, this version of the pipeline reads 1;" in result.stderr
    assert not (tmp_path / "report").exists()


def test_bad_input_exits_2_and_writes_nothing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = invoke(empty)
    assert r.exit_code == 2
    assert r.stderr == (
        f"Error: RUN_DIR {empty}: no pipeline artifacts found; looked for encode caches (manifest.json + zarr.json), "
        "training runs (summary.json + metrics.jsonl), infer outputs (predictions.parquet) and bench*.json\n"
    )
    assert list(empty.iterdir()) == []

    r = invoke(tmp_path / "nope", tmp_path / "nada")
    assert r.exit_code == 2
    assert r.stderr == f"Error: - RUN_DIR {tmp_path / 'nope'}: no such directory\n- RUN_DIR {tmp_path / 'nada'}: no such directory\n"

    run = tmp_path / "run"
    make_infer(run / "infer")
    r = invoke(run, "--out", run)  # a folder with other things in it is never replaced
    assert r.exit_code == 2
    assert r.stderr == f"Error: --out {run}: is this command's input {run}; choose a separate --out (nothing was changed)\n"
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.md").write_text("mine")
    r = invoke(run, "--out", other)
    assert r.exit_code == 2
    assert r.stderr == (f"Error: --out {other}: exists and was not written by `pipeline report` (no .pipeline-artifact.json "
                        "marking it a report); choose a new or empty folder (nothing was changed)\n")
    assert [p.name for p in other.iterdir()] == ["todo.md"]
    assert sorted(p.name for p in run.iterdir()) == ["infer"]


def test_a_section_that_fails_costs_only_that_section(full_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(full_run / "checkpoint", run / "checkpoint")
    summary = json.loads((run / "checkpoint" / "summary.json").read_text())
    summary["heads"][0] = "not a head"
    (run / "checkpoint" / "summary.json").write_text(json.dumps(summary))
    result = invoke(run, "--out", tmp_path / "rep")
    assert result.exit_code == 0, result.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "_This section could not be drawn (AttributeError: 'str' object has no attribute 'get')._" in md
    assert "- section 'heads': AttributeError: 'str' object has no attribute 'get'" in md
    assert [line for line in md.splitlines() if line.startswith("## ")] == SECTIONS
