"""``--storage-dtype int8``: round-trip error bound per row, every reader returning the same
dequantized float32 rows, and infer ``--exit none`` on an int8 cache answering as training did
(real MiniLM states of 120 Cora nodes, CPU). Resume of a killed int8 encode: test_encode_cli.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stage1_encode.cache.quantize import dequantize_int8, quantize_int8, round_like_storage, stored_bytes_per_node
from stage1_encode.cache.reader import open_cache

NODES = 120
RUNGS = (0, 3, 6)
# |x - q * scale| <= scale / 2 + 128 * scale * 2**-24: half a quantization step, plus the float32
# rounding of q * scale (|q| <= 127, relative 2**-24) and of the float64 quotient (far below).
SLACK = 128 * 2.0**-24


def bound(scale: np.ndarray) -> np.ndarray:
    return scale.astype(np.float64)[..., None] * (0.5 + SLACK)


@pytest.fixture(scope="module")
def caches(tmp_path_factory, cora_cache):
    """(root for outputs, float32 cache, int8 cache) of the same nodes, texts and settings."""
    f32, i8 = (cora_cache(NODES, max_length=16, block_size=16, storage_dtype=dtype)[1] for dtype in ("float32", "int8"))
    return tmp_path_factory.mktemp("int8"), f32, i8


def test_round_trip_error_bound_per_row(caches):
    _, f32, i8 = caches
    exact, reader = open_cache(f32).read(), open_cache(i8)
    assert reader.dtype == np.float32 and reader._states.dtype == np.int8
    scale = reader.scales()  # (N, S)
    got = reader.read()
    assert got.dtype == np.float32 and got.shape == exact.shape == (NODES, 7, 384)
    assert np.array_equal(scale, np.abs(exact).max(-1) / np.float32(127))  # per node and state absmax / 127
    err = np.abs(exact.astype(np.float64) - got)
    assert (err <= bound(scale)).all()
    assert (err.max(-1) / scale).min() > 0.3 and (err.max(-1) / scale).max() > 0.49  # the bound is nearly reached: rows really are int8
    q = np.asarray(reader._states[:])
    assert np.abs(q).max(-1).min() == 127  # every row spans the whole range (its absmax maps to +-127)
    # adversarial rows: scales over 20 orders of magnitude, zero rows, ties, negative absmax
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2000, 64)) * 10.0 ** rng.uniform(-10, 10, (2000, 1))).astype(np.float32)
    x[0], x[1] = 0, 0
    x[1, :3] = (-1.0, 0.5, 1 / 254)  # absmax 1: 1/254 lies on a half step
    x[2] /= np.abs(x[2]).max()
    x[2, 0] = -3.0  # a negative absmax: q = -127
    q, s = quantize_int8(x)
    d = dequantize_int8(q, s)
    assert np.abs(q).max() == 127 and s[0] == 0 and not d[0].any() and q[1, 0] == -127 and q[2, 0] == -127
    assert (np.abs(x.astype(np.float64) - d) <= bound(s)).all()
    assert np.array_equal(round_like_storage(torch.from_numpy(x), "int8").numpy(), d)  # infer's rounding of fresh states
    assert stored_bytes_per_node(7, 576, "int8") == 7 * 576 + 28 and stored_bytes_per_node(7, 576, "float16") == 7 * 576 * 2


def test_every_reader_gives_the_dequantized_rows(caches):
    from stage2_train.data import CachedFeatures, open_train_data
    from stage2_train.distributed import ShardFeatures
    from stage2_train.out_of_core import OutOfCoreFeatures, open_features
    from stage3_infer.compat import CacheRows

    _, _, i8 = caches
    reader = open_cache(i8)
    want = dequantize_int8(np.asarray(reader._states[:]), np.asarray(reader._scales_array[:]))  # (N, S, H) via zarr
    positions = [0, 3, 6]
    nodes = np.random.default_rng(1).integers(0, NODES, 300)
    expect = torch.from_numpy(want[nodes][:, positions])

    fresh = lambda: open_cache(i8)  # noqa: E731  (a reader that has not read the whole array yet)
    r = fresh()
    assert r._raw and r.chunk_nodes == 16
    assert np.array_equal(r.read_rows(nodes, positions), want[nodes][:, positions])  # pread rows and whole chunks
    assert np.array_equal(r._read_all(np.array(positions)), want[:, positions])
    for i in (0, 7):  # the last chunk is cut to 8 rows
        assert np.array_equal(r.read_chunk(i), want[i * 16 : (i + 1) * 16])
        out = np.empty((16, 7, 384), np.float32)
        assert r.read_chunk_into(i, out) == min(16, NODES - 16 * i) and np.array_equal(out[: min(16, NODES - 16 * i)], want[i * 16 : (i + 1) * 16])
    r = fresh()
    r._raw = None  # another layout: reads go through zarr
    assert np.array_equal(r.read_rows(nodes, positions), want[nodes][:, positions])
    assert np.array_equal(r.read(), want)

    data = open_train_data(i8, RUNGS, None, "ladder")
    mem, mode = open_features(data, None)
    assert mode["mode"] == "in-memory" and mode["rungs_bytes"] == NODES * 3 * 384 * 4
    assert isinstance(mem, CachedFeatures) and torch.equal(mem(torch.as_tensor(nodes)), expect)
    ooc, mode = open_features(open_train_data(i8, RUNGS, None, "ladder"), 300_000)
    assert isinstance(ooc, OutOfCoreFeatures) and mode["mode"] == "out-of-core"
    assert torch.equal(ooc(torch.as_tensor(nodes)), expect) and ooc.chunks_read > 0
    shard = ShardFeatures(open_train_data(i8, RUNGS, None, "ladder"))
    shard.load(nodes[:50])
    assert torch.equal(shard(torch.as_tensor(nodes)), expect)
    rows = CacheRows(fresh(), positions, i8)
    assert rows.states is not None and torch.equal(rows(torch.as_tensor(nodes)), expect)
    rows.states = None  # the per-call path of a cache too big for memory
    assert torch.equal(rows(torch.as_tensor(nodes)), expect)


def test_int8_cache_infer_none_equals_training(caches):
    from stage2_train.checkpoint import load_checkpoint
    from stage2_train.config import TrainConfig
    from stage2_train.data import CachedFeatures, open_train_data
    from stage2_train.run import run as train
    from stage2_train.sampling import Sampler
    from stage3_infer.config import InferConfig
    from stage3_infer.predictions import read_predictions
    from stage3_infer.run import run as infer

    root, _, i8 = caches
    train(TrainConfig(cache=i8, out=root / "run", epochs=3, patience=3, batch_size=16, hidden_channels=32, dropout=0.0, lr=3e-3,
                      rungs=RUNGS, num_threads=1))
    infer(InferConfig(root / "run", root / "pred", exit="none", max_targets=12))
    ck = load_checkpoint(root / "run")
    data = open_train_data(i8, RUNGS, None, "ladder")
    targets = np.flatnonzero(data.graph.split == "test")[:12]
    sub = Sampler(data.graph.edge_index, data.graph.num_nodes, **ck.sampler).sample(targets)
    with torch.no_grad():
        logits = ck.model(CachedFeatures(data)(sub.nodes), sub)[-1]  # (B, C)
    t = read_predictions(root / "pred").to_pydict()
    assert t["predicted_label"] == [ck.label_names[i] for i in logits.argmax(-1).tolist()]
    # infer batches the targets' texts otherwise than encode did: a state can round to the
    # neighbouring int8 step (a BLAS kernel's summation order follows the batch's shape)
    assert np.abs(np.asarray(t["confidence"]) - torch.softmax(logits, -1).max(-1).values.numpy()).max() <= 1e-3
    assert json.loads((i8 / "manifest.json").read_text())["storage_dtype"] == "int8"


def test_int8_cache_without_scales_refused(caches, tmp_path, cli):
    import shutil

    _, _, i8 = caches
    broken = tmp_path / "broken.zarr"
    shutil.copytree(i8, broken)
    shutil.rmtree(broken / "scales")
    result = cli("train", broken, "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert f"Error: {broken}: an int8 cache without its scales array; " in result.output
    assert not (tmp_path / "run").exists()


def test_truncated_scales_chunk_is_a_damaged_block(caches, tmp_path):
    import shutil

    from pipeline.core.errors import InputError

    _, _, i8 = caches
    broken = tmp_path / "broken.zarr"
    shutil.copytree(i8, broken)
    f = broken / "scales" / "c" / "2" / "0"
    f.write_bytes(f.read_bytes()[:10])
    with pytest.raises(InputError) as err:
        open_cache(broken).check_complete()
    assert f"chunk file {f} has 10 bytes, expected {16 * 7 * 4} (truncated)" in err.value.message
