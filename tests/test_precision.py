"""One precision per cache, on CPU: a bfloat16-encoded cache (real MiniLM, 45 Cora nodes) is
re-run by ``infer`` in bfloat16, so ``--exit none`` answers exactly as training did; another
``--dtype`` is refused naming both dtypes unless ``--allow-dtype-mismatch`` (recorded);
``--device auto`` resolves to cpu here and is saved resolved."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.core.graph import load_graph
from stage3_infer.config import InferConfig
from stage3_infer.predictions import read_predictions
from stage3_infer.run import run

NODES = 45


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory, cora_cache):
    """(root, run dir, graph, cache) of a ladder trained on the bfloat16-encoded MiniLM cache."""
    from stage2_train.config import TrainConfig
    from stage2_train.run import run as train

    root = tmp_path_factory.mktemp("bf16")
    graph_dir, cache = cora_cache(NODES, max_length=32, block_size=16, dtype="bfloat16")
    train(TrainConfig(cache=cache, out=root / "run", epochs=3, patience=3, batch_size=16, hidden_channels=32, dropout=0.0, lr=3e-3))
    return root, root / "run", load_graph(graph_dir), cache


def _training_logits(run_dir, targets):
    """The ladder on the cached states over the deterministic evaluation subgraphs: (S, B, C)."""
    from stage2_train.checkpoint import load_checkpoint
    from stage2_train.data import CachedFeatures, open_train_data
    from stage2_train.sampling import Sampler

    ck = load_checkpoint(run_dir)
    data = open_train_data(ck.cache_path, tuple(ck.layers), None, "ladder")
    sub = Sampler(data.graph.edge_index, data.graph.num_nodes, **ck.sampler).sample(targets)
    with torch.no_grad():
        return ck.model(CachedFeatures(data)(sub.nodes), sub), ck


def test_bf16_cache_infer_none_equals_training(bf16_run):
    root, run_dir, graph, cache = bf16_run
    assert json.loads((cache / "manifest.json").read_text())["compute_dtype"] == "bfloat16"
    summary = run(InferConfig(run_dir, root / "pred", exit="none"))
    test = np.flatnonzero(graph.split == "test")
    logits, ck = _training_logits(run_dir, test)
    t = read_predictions(root / "pred").to_pydict()
    assert t["predicted_label"] == [ck.label_names[i] for i in logits[-1].argmax(-1).tolist()]
    want = torch.softmax(logits[-1], -1).max(-1).values.numpy()
    # infer batches the targets' texts otherwise than encode did, and a bfloat16 matmul of
    # another shape can round differently (seen: 2.8e-5 on an AVX2 CPU, below 1e-5 on AVX-512)
    assert np.abs(np.asarray(t["confidence"]) - want).max() <= 1e-3
    assert summary["compute_dtype"] == summary["cache_compute_dtype"] == "bfloat16" and not summary["dtype_mismatch_allowed"]
    saved = json.loads((root / "pred" / "infer_config.json").read_text())
    assert saved["device"] == "cpu" and saved["dtype"] == "bfloat16"  # auto and the cache's dtype, resolved


def test_other_dtype_refused_naming_both_unless_allowed(bf16_run, cli, tmp_path):
    _, run_dir, _, cache = bf16_run
    result = cli("infer", "--checkpoint", run_dir, "--out", tmp_path / "refused", "--dtype", "float32")
    assert result.exit_code == 2, result.output
    assert (f"Error: --dtype float32: cache {cache} was encoded in bfloat16; the LLM must run in bfloat16 "
            "to reproduce the states training read. Drop --dtype (uses bfloat16), or pass --allow-dtype-mismatch") in result.output
    assert not (tmp_path / "refused").exists()

    result = cli("infer", "--checkpoint", run_dir, "--out", tmp_path / "allowed", "--exit", "none",
                 "--dtype", "float32", "--allow-dtype-mismatch")
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "allowed" / "infer_config.json").read_text())
    assert saved["dtype"] == "float32" and saved["allow-dtype-mismatch"] is True
    summary = json.loads((tmp_path / "allowed" / "summary.json").read_text())
    assert summary["compute_dtype"] == "float32" and summary["cache_compute_dtype"] == "bfloat16" and summary["dtype_mismatch_allowed"]
    # the LLM really ran in float32: the same targets in the same batches in bfloat16 answer otherwise
    run(InferConfig(run_dir, tmp_path / "same", exit="none"))
    confidence = [np.asarray(read_predictions(tmp_path / d).column("confidence").to_pylist()) for d in ("allowed", "same")]
    assert not np.array_equal(*confidence)


@pytest.mark.parametrize("args, message", [
    (("--device", "gpu"), "Error: --device gpu: not a device; use auto, cpu, cuda or cuda:N"),
    (("--dtype", "int8"), "Error: --dtype int8: choose one of float32, bfloat16, float16 (default: the cache's)"),
])
def test_bad_device_or_dtype_refused_before_any_work(bf16_run, cli, tmp_path, args, message):
    _, run_dir, _, _ = bf16_run
    for command in (("infer", "--checkpoint", run_dir, "--out", tmp_path / "out"), ("bench", "infer", "--checkpoint", run_dir)):
        result = cli(*command, *args)
        assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_gpu_refused(bf16_run, cli, tmp_path):
    _, run_dir, _, _ = bf16_run
    result = cli("infer", "--checkpoint", run_dir, "--out", tmp_path / "out", "--device", "cuda")
    assert result.exit_code == 2 and "Error: --device cuda: no CUDA device is visible; use --device cpu" in result.output
    assert not (tmp_path / "out").exists()


def test_train_saves_the_resolved_device_and_no_cache_uses_the_cache_dtype(bf16_run, cli, tmp_path):
    _, run_dir, _, cache = bf16_run
    assert json.loads((run_dir / "checkpoint.json").read_text())["device"] == "cpu"  # auto, resolved
    assert json.loads((run_dir / "train_config.json").read_text())["device"] == "cpu"  # the replayable flags too
    result = cli("train", cache, "--out", tmp_path / "r", "--dtype", "bfloat16")
    assert result.exit_code == 2 and "--dtype/--allow-dtype-mismatch are for --no-cache (only then does the LLM run)" in result.output
    result = cli("train", cache, "--out", tmp_path / "r", "--no-cache", "--dtype", "float16")
    assert result.exit_code == 2 and "Error: --dtype float16: cache" in result.output and "was encoded in bfloat16" in result.output
    assert not (tmp_path / "r").exists()


def test_device_values():
    from pipeline.core.devices import device_problem, resolve_device, to_device

    assert device_problem("auto") is None and device_problem("cpu") is None
    assert device_problem("cuda:x") == "--device cuda:x: not a device; use auto, cpu, cuda or cuda:N"
    if not torch.cuda.is_available():
        assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
        x = torch.ones(2)
        assert to_device(x, "cpu") is x  # the CUDA path (pinned, non-blocking) is never taken on CPU


def test_ladder_trains_under_bf16_autocast():
    """The GPU path's mixed precision, with CPU autocast standing in for CUDA's: every GNN
    kind runs, and the float32 loss backpropagates."""
    from stage2_train.ladder import GLadder
    from stage2_train.loop import head_losses
    from stage2_train.sampling import Sampler

    sampler = Sampler(torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]]), 4, mode="ego", hops=1)
    sub = sampler.sample(np.array([0, 2]))
    x, y = torch.randn(len(sub.nodes), 2, 16), torch.tensor([0, 1])
    for gnn in ("sage", "gcn", "gat"):
        grads = {}
        for mixed in (False, True):
            torch.manual_seed(0)
            model = GLadder(16, 8, 3, 2, gnn=gnn)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
                logits = model(x, sub)
            assert logits.dtype == (torch.bfloat16 if mixed else torch.float32) and logits.shape == (2, 2, 3)
            head_losses(logits.float(), y, torch.ones(2)).backward()
            grads[mixed] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        assert grads[True].keys() == grads[False].keys() and len(grads[True]) > 0
        for n, g in grads[True].items():  # bf16 carries ~3 digits: the same gradients, roughly
            assert torch.isfinite(g).all() and torch.allclose(g.float(), grads[False][n], rtol=0.1, atol=0.05), n
