"""Fine-tuning baselines (--arch lora|ia3|prefix|finetune), export, and the cost ledger.

Real parts on a small slice: the built-in MiniLM-L6 (22M parameters) on 40 Cora texts at
16 tokens, real peft adapters, a real Zarr cache.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.core.errors import InputError

MODEL, MAX_LEN = "minilm-l6", 16
# learning rates that move 22M-parameter MiniLM within a few 2-batch epochs
LRS = {"lora": 3e-3, "ia3": 3e-2, "prefix": 1e-2, "finetune": 3e-4}


@pytest.fixture(scope="module")
def slice_cache(cora_cache) -> tuple[Path, Path]:
    """(graph folder, cache) of 40 Cora nodes."""
    return cora_cache(40, model=MODEL, max_length=MAX_LEN, block_size=8, batch_tokens=128, storage_dtype="float32")


def _config(cache: Path, out: Path, arch: str, **kw):
    from stage2_train.config import TrainConfig

    return TrainConfig(cache, out, arch=arch, lr=LRS[arch], device="cpu", **kw)


def _classifier_and_texts(cache: Path, arch: str, cfg):
    from pipeline.core.graph import load_graph
    from stage1_encode.cache.manifest import read_manifest
    from stage2_train.finetune_loop import TextBatches
    from stage2_train.finetune_model import build_classifier
    from stage2_train.finetune_run import finetune_spec

    manifest = read_manifest(cache)
    graph = load_graph(manifest["graph_source"])
    model = build_classifier(finetune_spec(cfg, manifest, graph.num_classes))
    return model, TextBatches(model.stepper, graph.texts, MAX_LEN), graph


def _fresh_base_state() -> dict:
    from stage1_encode.models import load_model, resolve_model

    return load_model(resolve_model(MODEL)).model.state_dict()


@pytest.mark.parametrize("arch", ["lora", "ia3", "prefix", "finetune"])
def test_arch_trains_and_keeps_base_weights(slice_cache, tmp_path, arch):
    from stage2_train.data import resolve_split
    from stage2_train.finetune_loop import train_finetune_seed
    from stage2_train.loop import seed_everything

    _, cache = slice_cache
    cfg = _config(cache, tmp_path / "unused", arch, epochs=6, patience=6)
    seed_everything(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, texts, graph = _classifier_and_texts(cache, arch, cfg)
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []  # a clean log
    split = resolve_split(graph, None, 0)
    lines: list[dict] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = train_finetune_seed(model, texts, split, np.asarray(graph.labels), cfg, 0, lines.append)
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning) or "peft" in w.filename] == []  # prefix's forward too
    assert [x["epoch"] for x in lines] == [1, 2, 3, 4, 5, 6]
    assert lines[-1]["loss"] < lines[0]["loss"]
    assert lines[-1]["train_acc_running"] > lines[0]["train_acc_running"]
    saved = set(r.state_dict)
    fresh = _fresh_base_state()
    base = model.base_state()
    assert set(base) == set(fresh)
    changed = [k for k in fresh if not torch.equal(base[k], fresh[k])]
    if arch == "finetune":
        assert changed  # the comparison can fail: full fine-tuning moves the base weights
        assert {k for k in saved if k.startswith("llm.")} == {f"llm.{k}" for k in fresh}
    else:
        assert changed == []  # bit-identical base weights after lora/ia3/prefix training
        assert all(k.startswith(("adapter.", "head.")) for k in saved) and any(k.startswith("adapter.") for k in saved)


def test_trained_state_round_trip_gives_identical_predictions(slice_cache, tmp_path):
    from safetensors.torch import load_file, save_file

    from stage2_train.finetune_loop import predict_nodes

    _, cache = slice_cache
    cfg = _config(cache, tmp_path / "unused", "lora", epochs=1)
    torch.manual_seed(0)
    model, texts, graph = _classifier_and_texts(cache, "lora", cfg)
    with torch.no_grad():  # move the adapter away from its zero init so the check means something
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    nodes = np.arange(graph.num_nodes)
    before = predict_nodes(model, texts, nodes, 16)
    save_file(model.trained_state(), str(tmp_path / "w.safetensors"))
    torch.manual_seed(1)
    again, texts2, _ = _classifier_and_texts(cache, "lora", cfg)
    assert not torch.equal(predict_nodes(again, texts2, nodes, 16), before)
    again.load_trained_state(load_file(str(tmp_path / "w.safetensors")))
    assert torch.equal(predict_nodes(again, texts2, nodes, 16), before)


def test_only_training_labels_reach_the_tuned_weights(slice_cache, tmp_path):
    """Changing every validation and test label leaves the trained adapter bit-identical."""
    from stage2_train.data import resolve_split
    from stage2_train.finetune_loop import train_finetune_seed
    from stage2_train.loop import seed_everything

    _, cache = slice_cache
    cfg = _config(cache, tmp_path / "unused", "lora", epochs=1)
    states = []
    for scramble in (False, True):
        seed_everything(0)
        model, texts, graph = _classifier_and_texts(cache, "lora", cfg)
        split = resolve_split(graph, None, 0)
        labels = np.asarray(graph.labels).copy()
        if scramble:
            others = np.concatenate([split["val"], split["test"]])
            labels[others] = (labels[others] + 1) % graph.num_classes
        r = train_finetune_seed(model, texts, split, labels, cfg, 0, lambda line: None)
        states.append((r.state_dict, r.val_acc[0], r.test_acc[0]))
    (a, val_a, test_a), (b, val_b, test_b) = states
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert (val_a, test_a) != (val_b, test_b)  # the scrambled labels were read, for scoring only


@pytest.fixture(scope="module")
def lora_run(slice_cache, tmp_path_factory) -> Path:
    from stage2_train.run import run

    _, cache = slice_cache
    out = tmp_path_factory.mktemp("lora_run") / "run"
    run(_config(cache, out, "lora", epochs=2, patience=2, seeds=(0, 1)))
    return out


COST_FIELDS = ("trainable_params", "backward_params", "peak_memory_bytes", "epoch_s_mean", "train_s_mean", "total_s")


def test_run_writes_adapters_ledger_and_reloads(lora_run, slice_cache):
    from safetensors.torch import load_file

    from pipeline.core.graph import load_graph
    from stage2_train.checkpoint import load_checkpoint
    from stage2_train.data import resolve_split
    from stage2_train.finetune_loop import TextBatches, accuracy

    summary = json.loads((lora_run / "summary.json").read_text())
    cost = json.loads((lora_run / "cost.json").read_text())["cost"]  # measured, beside the results
    assert all(cost[k] > 0 for k in COST_FIELDS), cost
    assert cost["epochs_run"] == [2, 2] and cost["encode_used"] is False and cost["encode_s"] is None
    assert cost["backward_params"] > 100 * cost["trainable_params"]  # the backward runs through the frozen LLM
    assert all(k.startswith(("adapter.", "head.")) for k in load_file(str(lora_run / "seed_0" / "model.safetensors")))
    assert not list(lora_run.rglob("*.bin")) and not list(lora_run.rglob("*.pt"))
    for seed in (0, 1):
        ckpt = load_checkpoint(lora_run, seed=seed)
        graph = load_graph(ckpt.graph_source)
        split = resolve_split(graph, None, seed)
        texts = TextBatches(ckpt.model.stepper, graph.texts, MAX_LEN)
        acc = accuracy(ckpt.model, texts, split["test"], np.asarray(graph.labels), 16)
        assert acc == summary["per_seed"][seed]["test_acc"]


def test_infer_full_depth_and_early_exit_refused(lora_run, tmp_path, cli):
    from stage3_infer.config import InferConfig
    from stage3_infer.run import run

    summary = run(InferConfig(lora_run, tmp_path / "pred"))
    train = json.loads((lora_run / "summary.json").read_text())
    best = train["default_seed"]
    assert summary["accuracy"] == next(r["test_acc"] for r in train["per_seed"] if r["seed"] == best)
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "pred" / "predictions.parquet")
    assert set(table.column("exit_layer").to_pylist()) == {6} and set(table.column("exit_rung").to_pylist()) == {0}
    result = cli("infer", "--checkpoint", lora_run, "--out", tmp_path / "p2", "--exit", "patience:1")
    assert result.exit_code == 2
    assert (f"--exit patience:1: {lora_run} is a fine-tuning run (--arch lora), which has no exit rungs and predicts "
            "at full depth only; pass --exit none or leave --exit out") in result.output
    assert not (tmp_path / "p2").exists()
    # a graph that changed since training would move the split: which nodes are test
    moved = tmp_path / "moved_run"
    shutil.copytree(lora_run, moved)
    config = json.loads((moved / "checkpoint.json").read_text())
    (moved / "checkpoint.json").write_text(json.dumps({**config, "graph_fingerprint": "0" * 64}))
    result = cli("infer", "--checkpoint", moved, "--out", tmp_path / "p3")
    assert result.exit_code == 2 and not (tmp_path / "p3").exists()
    assert result.stderr.endswith(f"Error: --checkpoint {moved}: graph '{config['graph_source']}' changed since training "
                                  "(fingerprint differs); retrain on the current graph\n"), result.output


def test_export_encode_equals_adapted_forward(lora_run, slice_cache, tmp_path):
    from stage1_encode.cache.reader import open_cache
    from stage1_encode.config import EncodeConfig
    from stage1_encode.run import run as encode
    from stage2_train.checkpoint import load_checkpoint
    from stage2_train.export import ExportConfig, run_export
    from stage2_train.finetune_loop import TextBatches

    graph, base_cache = slice_cache
    model_dir = run_export(ExportConfig(lora_run, tmp_path / "tuned"))
    record = json.loads((model_dir / "pipeline_export.json").read_text())
    assert record["arch"] == "lora" and record["train_s"] > 0
    cache = tmp_path / "tuned.zarr"
    encode(EncodeConfig(str(graph), cache, model=str(model_dir), max_length=MAX_LEN, block_size=8, batch_tokens=128, storage_dtype="float32"))
    reader = open_cache(cache)
    states = torch.from_numpy(np.asarray(reader.read_all()))[:, -1]  # (N, H) last state
    ckpt = load_checkpoint(lora_run)
    texts = TextBatches(ckpt.model.stepper, reader_graph_texts(reader), MAX_LEN)
    with torch.no_grad():
        ckpt.model.eval()
        adapted = torch.cat([ckpt.model.pooled(texts(np.arange(a, min(a + 16, reader.num_nodes)))) for a in range(0, reader.num_nodes, 16)])
    torch.testing.assert_close(states, adapted, atol=2e-5, rtol=1e-4)
    base = torch.from_numpy(np.asarray(open_cache(base_cache).read_all()))[:, -1]
    assert (states - base).abs().max() > 1e-3  # the tuned model is not the base model
    assert reader.manifest["model_tuning"]["run"] == str(lora_run.resolve())

    # a record of another version, or a damaged one, is refused before anything is written
    record_path = model_dir / "pipeline_export.json"
    rerun = f"write {model_dir} again with `pipeline export RUN_DIR --out {model_dir} --overwrite`"
    for text, message in ((json.dumps({**record, "format_version": 2}), f"{record_path}: format version 2, this version of the pipeline reads 1; {rerun}"),
                          ('{"format_version": 1, "ru', f"{record_path}: is not valid JSON (")):
        record_path.write_text(text)
        with pytest.raises(InputError) as err:
            encode(EncodeConfig(str(graph), tmp_path / "again.zarr", model=str(model_dir), max_length=MAX_LEN, block_size=8, batch_tokens=128))
        assert err.value.message.startswith(message) and not (tmp_path / "again.zarr").exists()


def reader_graph_texts(reader) -> list[str]:
    from pipeline.core.graph import load_graph

    return load_graph(reader.manifest["graph_source"]).texts


def test_export_refusals(slice_cache, tmp_path):
    from stage2_train.export import ExportConfig, run_export
    from stage2_train.run import run

    _, cache = slice_cache
    prefix = tmp_path / "prefix"
    run(_config(cache, prefix, "prefix", epochs=1))
    with pytest.raises(InputError) as err:
        run_export(ExportConfig(prefix, tmp_path / "m"))
    assert err.value.message == (f"RUN {prefix}: prefix tuning adds virtual tokens, not weights, so it cannot be merged into an HF model; "
                                 "export a lora, ia3 or finetune run")
    assert not (tmp_path / "m").exists()


def test_export_out_ownership(lora_run, tmp_path):
    """--out: a foreign folder, a folder inside the run, or an earlier export without
    --overwrite are refused before any work and left as they were; with --overwrite an
    earlier export is replaced."""
    from stage2_train.export import ExportConfig, run_export

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(InputError) as err:
        run_export(ExportConfig(lora_run, foreign))
    assert err.value.message == (f"--out {foreign}: exists and was not written by `pipeline export` (no .pipeline-artifact.json "
                                 "marking it a model); choose a new or empty folder (nothing was changed)")
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    inside = lora_run / "tuned"
    with pytest.raises(InputError) as err:
        run_export(ExportConfig(lora_run, inside))
    assert err.value.message.startswith(f"--out {inside}: ")
    assert not inside.exists()

    out = run_export(ExportConfig(lora_run, tmp_path / "tuned"))
    first = (out / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(InputError) as err:
        run_export(ExportConfig(lora_run, out))
    assert err.value.message == (f"--out {out}: holds an earlier model; pass --overwrite to replace it, or choose another --out "
                                 "(nothing was changed)")
    run_export(ExportConfig(lora_run, out, overwrite=True))
    assert (out / "model.safetensors").stat().st_mtime_ns != first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


@pytest.mark.parametrize("arch", ["ladder", "mlp", "gcn", "sage"])
def test_cache_arch_ledger(slice_cache, tmp_path, arch):
    from stage2_train.run import run

    _, cache = slice_cache
    out = tmp_path / arch
    run(_config_cache(cache, out, arch))
    cost = json.loads((out / "cost.json").read_text())["cost"]
    assert all(cost[k] > 0 for k in (*COST_FIELDS, "encode_s")), cost
    assert cost["encode_used"] is True and cost["epochs_run"] == [3]
    manifest = json.loads((cache / "manifest.json").read_text())
    assert cost["encode_s"] == manifest["encode_s"]
    assert cost["total_s"] == pytest.approx(cost["encode_s"] + cost["train_s_mean"])
    assert cost["backward_params"] <= cost["trainable_params"]  # the LLM is not in the backward


def _config_cache(cache: Path, out: Path, arch: str):
    from stage2_train.config import TrainConfig

    return TrainConfig(cache, out, arch=arch, epochs=3, num_threads=1)


def test_encode_time_recorded_unknown_for_untimed_blocks_and_marks_versioned(slice_cache, tmp_path):
    import shutil

    from stage1_encode.cache.blocks import encode_seconds
    from stage2_train.ledger import PeakMemory, ledger

    _, cache = slice_cache
    marks = sorted((cache / "blocks").glob("*.done"))
    total = sum(json.loads(m.read_text())["seconds"] for m in marks)
    assert json.loads((cache / "manifest.json").read_text())["encode_s"] == total > 0
    untimed = tmp_path / "untimed.zarr"
    shutil.copytree(cache, untimed)
    mark = sorted((untimed / "blocks").glob("*.done"))[0]
    nodes = json.loads(mark.read_text())["nodes"]
    mark.write_text(json.dumps({"format_version": 1, "nodes": nodes}) + "\n")
    assert encode_seconds(untimed) is None
    mark.write_text(json.dumps({"nodes": nodes}) + "\n")  # a mark of no known format version
    with pytest.raises(InputError) as err:
        encode_seconds(untimed)
    assert err.value.message == (f"{mark}: format version None, this version of the pipeline reads 1; "
                                 f"re-encode the cache with `pipeline encode GRAPH --out {untimed} --overwrite`")
    cost = ledger([{"train_s": 2.0, "epoch_s": 1.0, "epochs_run": 2}], 10, 10, PeakMemory(), {}, reads_cache=True)
    assert cost["encode_s"] is None and cost["total_s"] is None  # unknown, never 0


def test_finetune_flags_refused(slice_cache, tmp_path):
    from stage2_train.config import TrainConfig

    _, cache = slice_cache
    with pytest.raises(InputError) as err:
        TrainConfig(cache, tmp_path / "x", arch="lora", layer=3, rungs=(1, 2)).validate()
    assert err.value.message == (
        "- --rungs is for --arch ladder; it has no effect with --arch lora: leave it out\n"
        "- --layer is for --arch mlp/gcn/sage; it has no effect with --arch lora: leave it out"
    )
