"""``pipeline train --memory-budget``: out-of-core training on a real cache (120 Cora nodes, MiniLM).

Covers: the cache's fast chunk/row reads equal zarr's; out-of-core rows equal in-memory rows
exactly, within the chunk cache's bound; chunk-grouped batch order; the same losses and
accuracies in both modes for the same batch order; micro-batches (the step memory bound) give
the same logits and, with gradients accumulated, the same training as whole batches; the CLI
writes the same files and records the mode; the read-ahead thread stops on errors (in the
producer or in the loop); bad budgets, hubs and the full sampler refused with exact messages.
"""

from __future__ import annotations

import contextlib
import json
import threading

import numpy as np
import pytest
import torch

from pipeline.core.errors import InputError
from stage2_train.checkpoint import read_metrics
from stage2_train.config import TrainConfig
from pipeline.core.parsers import parse_size
from stage2_train.out_of_core import OutOfCoreFeatures, ReadAhead, chunk_group_batches

NODES = 120
RUNGS = (0, 3, 6)
BUDGET = 200_000  # bytes; the 3 rungs take 120 x 3 x 384 x 2 = 276,480
FANOUT = 2  # with 1 hop, at most 3 nodes a subgraph: fits the 40,740-byte step limit of BUDGET (12,672 bytes a node)


@pytest.fixture(scope="module")
def small(tmp_path_factory, cora_cache):
    """(root for outputs, cache)."""
    return tmp_path_factory.mktemp("ooc"), cora_cache(NODES, max_length=16, block_size=16)[1]


def _data(cache):
    from stage2_train.data import open_train_data

    return open_train_data(cache, RUNGS, None, "ladder")


def _cfg(small, name, **kw):
    root, cache = small
    base = dict(cache=cache, out=root / name, hops=1, epochs=3, patience=3, batch_size=16, hidden_channels=32, rungs=RUNGS, num_threads=1)
    return TrainConfig(**{**base, **kw})


class ChunkOrdered:
    """In-memory features that batch in the out-of-core (chunk-grouped) order, without read-ahead."""

    orders_batches = True

    def __init__(self, features, chunk_nodes):
        self.features, self.chunk_nodes = features, chunk_nodes

    def __call__(self, nodes):
        return self.features(nodes)

    def pieces(self, sub):
        return [sub]

    def epoch(self, sampler, nodes, size, gen, max_batches=None):
        from stage2_train.step_memory import MicroBatch

        parts = chunk_group_batches(nodes, size, self.chunk_nodes, gen)[:max_batches]
        return (MicroBatch(b, sub, self(sub.nodes)) for b in parts for sub in (sampler.sample(b, gen),))


def test_fast_cache_reads_equal_zarr_reads(small):
    reader = _data(small[1]).reader
    assert reader._raw and reader.chunk_nodes == 16
    nodes = np.random.default_rng(0).integers(0, NODES, 300)
    assert np.array_equal(reader.read_rows(nodes, [0, 3]), reader._read_by_chunk(nodes, np.array([0, 3])))
    for i in (0, 5, 7):  # chunk 7 is the last, cut to 8 rows
        assert np.array_equal(reader.read_chunk(i), reader._states[i * 16 : (i + 1) * 16])
    assert reader.read_chunk(7).shape == (8, 7, 384)
    assert np.array_equal(reader._read_all(np.array(RUNGS)), reader._states[:][:, list(RUNGS)])


def test_out_of_core_rows_equal_in_memory_rows(small):
    from stage2_train.data import CachedFeatures

    data = _data(small[1])
    ooc, mem = OutOfCoreFeatures(data, BUDGET), CachedFeatures(data)
    assert mem.states is not None and ooc.lru.capacity == 100_000 and ooc.lru.num_slots == 2  # chunks of 36,864 bytes
    rng = np.random.default_rng(1)
    for _ in range(20):
        nodes = torch.as_tensor(rng.integers(0, NODES, rng.integers(1, 120)))
        assert torch.equal(ooc(nodes), mem(nodes))  # exact: same fp16 values, same rows, repeats kept
        assert ooc.lru.nbytes <= ooc.lru.capacity
    assert ooc.chunks_read > 0 and ooc.rows_read > 0 and ooc.lru.hits > 0


def test_chunk_grouped_order(small):
    nodes = np.arange(0, 120, 2)
    gen = torch.Generator().manual_seed(0)
    parts = chunk_group_batches(nodes, 8, 16, gen)
    flat = np.concatenate(parts)
    assert sorted(flat.tolist()) == nodes.tolist()
    chunks = flat // 16
    runs = chunks[np.r_[True, np.diff(chunks) != 0]]
    assert len(runs) == len(np.unique(chunks))  # each chunk's targets are consecutive
    assert not np.array_equal(runs, np.sort(runs))  # chunks in a shuffled order
    again = chunk_group_batches(nodes, 8, 16, torch.Generator().manual_seed(0))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_same_losses_in_memory_and_out_of_core_for_the_same_order(small):
    from stage2_train.checkpoint import build_model
    from stage2_train.data import CachedFeatures, resolve_split
    from stage2_train.loop import seed_everything, train_seed
    from stage2_train.run import model_spec
    from stage2_train.sampling import Sampler

    data = _data(small[1])
    cfg = _cfg(small, "unused", epochs=2, patience=2)
    split = resolve_split(data.graph, None, 0)
    sampler = Sampler(data.graph.edge_index, data.graph.num_nodes, mode="ego")
    spec = model_spec(cfg, 384, data.graph.num_classes, len(RUNGS))
    labels = np.asarray(data.graph.labels)
    results, lines = [], []
    for features in (ChunkOrdered(CachedFeatures(data), 16), OutOfCoreFeatures(data, BUDGET, readahead=2)):
        seed_everything(0)
        rows = []
        results.append(train_seed(build_model(spec), features, sampler, split, labels, cfg, 0, rows.append))
        lines.append(rows)
    assert lines[0] == lines[1] and len(lines[0]) == 2
    assert results[0].test_acc == results[1].test_acc and results[0].train_acc == results[1].train_acc
    assert all(torch.equal(results[0].state_dict[k], results[1].state_dict[k]) for k in results[0].state_dict)


def test_train_cli_out_of_core_writes_the_same_files(small, cli):
    root, cache = small
    args = ["train", cache, "--rungs", "0,3,6", "--epochs", "2", "--batch-size", "16", "--hidden-channels", "32", "--num-threads", "1",
            "--hops", "1", "--fanout", str(FANOUT)]
    for name, extra in (("cli_mem", ["--memory-budget", "1MB"]), ("cli_ooc", ["--memory-budget", "200KB"]), ("cli_default", [])):
        res = cli(*args, "--out", root / name, *extra)
        assert res.exit_code == 0, res.output
    files = {n: sorted(str(p.relative_to(root / n)) for p in (root / n).rglob("*") if p.is_file()) for n in ("cli_mem", "cli_ooc")}
    assert files["cli_mem"] == files["cli_ooc"] == [".pipeline-artifact.json", "checkpoint.json", "cost.json", "manifest.json", "metrics.jsonl", "seed_0/model.safetensors", "summary.json", "train_config.json"]
    summaries = {n: json.loads((root / n / "summary.json").read_text()) for n in ("cli_mem", "cli_ooc")}
    assert sorted(summaries["cli_mem"]) == sorted(summaries["cli_ooc"])
    assert sorted(read_metrics(root / "cli_ooc")[0]) == sorted(read_metrics(root / "cli_mem")[0])
    modes = {n: json.loads((root / n / "checkpoint.json").read_text())["features"] for n in ("cli_mem", "cli_ooc", "cli_default")}
    assert modes["cli_mem"] == {"mode": "in-memory", "memory_budget": 1_000_000, "limit_bytes": 1_000_000, "rungs_bytes": 276_480}
    assert modes["cli_ooc"] == {"mode": "out-of-core", "memory_budget": 200_000, "limit_bytes": 200_000, "rungs_bytes": 276_480,
                                "lru_capacity_bytes": 100_000, "chunk_nodes": 16, "readahead": 1, "step_limit_bytes": 40_740}
    assert modes["cli_default"]["mode"] == "in-memory" and modes["cli_default"]["memory_budget"] is None
    assert json.loads((root / "cli_ooc" / "checkpoint.json").read_text())["memory_budget"] == 200_000


def _read_ahead_threads():
    return [t for t in threading.enumerate() if t.name == "read-ahead" and t.is_alive()]


def test_read_ahead_stops_on_errors(small):
    def produce(i):
        if i == 3:
            raise ValueError("disk gone")
        return i

    it = ReadAhead(range(10), produce, depth=2)
    assert [next(it), next(it), next(it)] == [0, 1, 2]
    with pytest.raises(ValueError, match="disk gone"):
        next(it)
    assert not _read_ahead_threads()
    # an error in the consumer's loop body: closing the iterator stops the producer
    with pytest.raises(RuntimeError, match="step failed"):
        with contextlib.closing(ReadAhead(range(1000), lambda i: i, depth=1)) as it:
            for i in it:
                if i == 5:
                    raise RuntimeError("step failed")
    assert not _read_ahead_threads()
    # inside training: a read that fails mid-epoch ends train_seed with that error, no thread left
    from stage2_train.run import run

    data_reader_cls = type(_data(small[1]).reader)
    calls = {"n": 0}
    original = data_reader_cls.read_rows

    def failing(self, nodes, rungs=None):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError("read failed")
        return original(self, nodes, rungs)

    data_reader_cls.read_rows = failing
    try:
        with pytest.raises(OSError, match="read failed"):
            run(_cfg(small, "fails", memory_budget=BUDGET, fanout=FANOUT))
    finally:
        data_reader_cls.read_rows = original
    assert not _read_ahead_threads()
    assert not (small[0] / "fails").exists()


@pytest.mark.parametrize("value, message", [
    ("12XB", "--memory-budget 12XB: expected a size such as 512MB, 2GiB or 1.5G (units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"),
    ("-5MB", "--memory-budget -5MB: expected a size such as 512MB, 2GiB or 1.5G (units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"),
    ("0", "--memory-budget 0: expected a size such as 512MB, 2GiB or 1.5G (units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"),
    ("50KB", "--memory-budget 48.8 KiB: too small for out-of-core training of this cache; give at least 72.0 KiB (2 chunks of 36.0 KiB)"),
])
def test_bad_memory_budget(small, cli, value, message):
    root, cache = small
    res = cli("train", cache, "--out", root / "bad", "--rungs", "0,3,6", "--epochs", "1", "--memory-budget", value)
    assert res.exit_code == 2
    assert res.stderr.strip() == f"Error: {message}"
    assert not (root / "bad").exists()


HUB = ("Error: --memory-budget 195.3 KiB: the subgraph of target node 34 (35 nodes) needs about 440.2 KiB for one "
       "training step, more than the 39.8 KiB a step may use (half the budget is the chunk cache, the other half holds "
       "the step, the micro-batch being read and 1 read ahead); give --memory-budget 2.1 MiB or more, or smaller "
       "subgraphs (a lower --fanout or --hops)")
DEFAULT = ("Error: --memory-budget 195.3 KiB: the subgraph of target node 44 (25 nodes) needs about 315.4 KiB for one "
           "training step, more than the 39.8 KiB a step may use (half the budget is the chunk cache, the other half holds "
           "the step, the micro-batch being read and 1 read ahead); give --memory-budget 1.5 MiB or more, or smaller "
           "subgraphs (a lower --fanout or --hops)")  # the default 2-hop ego graph, at most 5 neighbours per node and hop
FULL = ("Error: --sampler full: a step over the whole graph (120 nodes) needs about 1.5 MiB, more than the 39.8 KiB a step "
        "may use out of core; train out of core with --sampler ego (or rwr), or give a --memory-budget the cache's rungs fit in")


@pytest.mark.parametrize("extra, message", [(["--hops", "1", "--fanout", "0"], HUB), ([], DEFAULT), (["--sampler", "full"], FULL)])
def test_steps_over_the_budget_refused_before_training(small, cli, extra, message):
    root, cache = small
    res = cli("train", cache, "--out", root / "hub", "--rungs", "0,3,6", "--hidden-channels", "32", "--memory-budget", "200KB", *extra)
    assert res.exit_code == 2
    assert res.stderr.strip() == message
    assert not (root / "hub").exists()


def test_micro_batches_give_the_whole_batch_logits_and_training(small):
    """Cut to the step limit, a batch's pieces give the same logits (eval) as the whole batch,
    and accumulated gradients the same training (dropout 0, so no random draws differ)."""
    from stage2_train.checkpoint import build_model
    from stage2_train.data import CachedFeatures, resolve_split
    from stage2_train.loop import seed_everything, train_seed
    from stage2_train.run import model_spec
    from stage2_train.sampling import Sampler
    from stage2_train.step_memory import select_graphs, step_cost

    data = _data(small[1])
    cfg = _cfg(small, "unused", epochs=2, patience=2, dropout=0.0, fanout=FANOUT)
    spec = model_spec(cfg, 384, data.graph.num_classes, len(RUNGS))
    sampler = Sampler(data.graph.edge_index, data.graph.num_nodes, mode="ego", fanout=FANOUT)
    cut = OutOfCoreFeatures(data, BUDGET, readahead=1, cost=step_cost(spec))
    whole = ChunkOrdered(CachedFeatures(data), 16)
    sub = sampler.sample(np.arange(0, 120, 3))
    ranges = cut.split(sub)
    assert len(ranges) > 4 and ranges[0][0] == 0 and ranges[-1][1] == 40
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    pieces = [select_graphs(sub, g0, g1) for g0, g1 in ranges]
    assert torch.equal(torch.cat([p.nodes for p in pieces]), sub.nodes)
    assert sum(p.edge_index.shape[1] for p in pieces) == sub.edge_index.shape[1]
    model = build_model(spec).eval()
    with torch.no_grad():
        full = model(whole(sub.nodes), sub)
        parts = torch.cat([model(cut(p.nodes), p) for p in pieces], dim=1)
    assert torch.allclose(full, parts, atol=1e-5)

    split = resolve_split(data.graph, None, 0)
    labels = np.asarray(data.graph.labels)
    results, lines = [], []
    for features in (whole, cut):
        seed_everything(0)
        rows = []
        results.append(train_seed(build_model(spec), features, sampler, split, labels, cfg, 0, rows.append))
        lines.append(rows)
    assert cut.micro_batches > 2 * len(lines[1]) * 5  # 5 batches an epoch, cut into many pieces
    for a, b in zip(*lines):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["val_acc_heads"] == b["val_acc_heads"]
    assert all(torch.allclose(results[0].state_dict[k], results[1].state_dict[k], atol=1e-5) for k in results[0].state_dict)


def test_parse_size():
    assert [parse_size(s) for s in ("512MB", "2GiB", "1.5G", "1000", "64 kib", None)] == [512 * 10**6, 2 * 2**30, 1_500_000_000, 1000, 65536, None]
    with pytest.raises(InputError, match=r"^--memory-budget 0.5: expected a size"):
        parse_size("0.5")  # under one byte


def test_bench_train_memory_child_and_refusal(small, cli):
    from stage2_train.bench_memory import MemoryBenchConfig, child

    root, cache = small
    # all 7 rungs (645,120 bytes), K = 128: 53,760 bytes a node, so 2-node subgraphs (1 hop, fanout 1) fit the step limit
    r = child("out-of-core", MemoryBenchConfig(cache=cache, memory_budget=500_000, batch_size=16, hops=1, fanout=1))
    assert r["mode"] == "out-of-core" and r["batches_per_epoch"] == 5 and len(r["loss_per_epoch"]) == 1
    assert r["lru_capacity"] == 250_000 and r["chunks_read"] + r["rows_read"] > 0 and r["peak_rss"] >= r["baseline_rss"] > 0
    assert r["step_limit"] == 138_888 and r["micro_batches"] > r["batches_per_epoch"]
    res = cli("bench", "train-memory", cache, "--memory-budget", "1MB")
    assert res.exit_code == 2
    assert res.stderr.strip() == ("Error: --memory-budget 976.6 KiB: the cache's rungs (630.0 KiB) fit in it; "
                                  "give a smaller budget to compare out of core with in memory")
    assert "train-memory" in cli("bench", "--help").output
