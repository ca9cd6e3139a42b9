"""``pipeline encode`` end to end: resume after a kill, shards, status, bad input (real MiniLM, CPU)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from cache_helpers import small_manifest

from pipeline.core.bench_json import read_bench
from pipeline.core.errors import InputError, PipelineError
from pipeline.core.graph import load_graph
from stage1_encode.cache.manifest import text_hashes
from stage1_encode.cache.reader import open_cache
from stage1_encode.cache.status import status_text
from stage1_encode.cache.writer import CacheWriter
from stage1_encode.config import EncodeConfig
from stage1_encode.run import run

REPO = Path(__file__).resolve().parents[1]
N = 32  # 4 blocks of 8 nodes
FLAGS = ["--model", "minilm-l6", "--max-length", "16", "--block-size", "8", "--batch-tokens", "64"]


@pytest.fixture(scope="session")
def tiny_graph(tmp_path_factory) -> Path:
    """The first N Cora nodes (string ids, to exercise that path) and the edges among them."""
    cora = load_graph("cora")
    folder = tmp_path_factory.mktemp("tiny_cora")
    ids = np.asarray([f"paper-{v}" for v in cora.node_ids[:N]], dtype=object)
    pq.write_table(pa.table({"node_id": ids, "text": cora.texts[:N]}), folder / "nodes.parquet")
    src, dst = cora.edge_index
    keep = (src < N) & (dst < N) & (src < dst)
    pq.write_table(pa.table({"src": ids[src[keep]], "dst": ids[dst[keep]]}), folder / "edges.parquet")
    return folder


def encode(*args: str) -> subprocess.Popen:
    # One thread everywhere: the same float reduction order as the in-process run.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "encode", *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return out


def flat(text: str) -> str:
    """Error text without click's box drawing and line wrapping."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def tree(path: Path) -> dict[str, bytes]:
    """Every file's bytes; the saved config differs only by its ``out`` path, and the block marks
    and manifest only by the encode and self-check seconds and the peak memory they record (measured, positive), so
    those are compared without them."""
    files = {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
    config = json.loads(files.pop("encode_config.json"))
    assert config.pop("out") == str(path)
    files["encode_config.json"] = json.dumps(config).encode()
    for name in [n for n in files if n.startswith("blocks/")] + ["manifest.json"]:
        data = json.loads(files[name])
        seconds = data.pop("seconds" if name.startswith("blocks/") else "encode_s")
        assert seconds > 0, (name, seconds)
        peak = data.pop("peak_bytes" if name.startswith("blocks/") else "encode_peak_memory_bytes")
        assert peak > 0, (name, peak)
        if name == "manifest.json":
            assert data["self_check"].pop("seconds") > 0
        files[name] = json.dumps(data).encode()
    return files


def _clean(tiny_graph: Path, out: Path, storage_dtype: str = "float16") -> Path:
    """An uninterrupted run, in-process (saves a process start), single-threaded like ``encode``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(EncodeConfig(str(tiny_graph), out, model="minilm-l6", max_length=16, block_size=8, batch_tokens=64, storage_dtype=storage_dtype))
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="session")
def clean_cache(tiny_graph: Path, tmp_path_factory) -> Path:
    return _clean(tiny_graph, tmp_path_factory.mktemp("clean") / "cache.zarr")


@pytest.fixture(scope="session")
def clean_int8_cache(tiny_graph: Path, tmp_path_factory) -> Path:
    return _clean(tiny_graph, tmp_path_factory.mktemp("clean_int8") / "cache.zarr", "int8")


@pytest.mark.parametrize("storage", ["float16", "int8"])
def test_killed_then_resumed_is_bit_identical(tiny_graph: Path, storage: str, request, tmp_path: Path) -> None:
    clean_cache = request.getfixturevalue("clean_cache" if storage == "float16" else "clean_int8_cache")
    flags = [*FLAGS, "--storage-dtype", storage]
    out = tmp_path / "cache.zarr"
    proc = encode(str(tiny_graph), "--out", str(out), *flags)
    deadline = time.time() + 600  # process start alone can take minutes on a loaded 2-core machine
    while not list((out / "blocks").glob("*.done")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    done = len(list((out / "blocks").glob("*.done")))
    assert 0 < done < 4, done  # really killed mid-run
    with pytest.raises(InputError) as err:
        open_cache(out).check_complete()
    assert "of 4 blocks missing" in err.value.message
    assert f"complete it with `pipeline encode {tiny_graph} --out {out} --model minilm-l6 --layers 0,1,2,3,4,5,6 --max-length 16" in err.value.message
    assert f"--storage-dtype {storage} --block-size 8" in err.value.message
    # a writer killed inside a chunk write leaves Zarr's temporary file beside the chunk:
    # plant one in the last (unfinished) block's chunks; the resumed encode removes it
    from stage1_encode.cache.geometry import chunk_file, scales_chunk_file
    from stage1_encode.cache.manifest import read_manifest

    last_chunk = (N - 1) // int(read_manifest(out)["chunk_nodes"])
    for f in [chunk_file(out, last_chunk)] + ([scales_chunk_file(out, last_chunk)] if storage == "int8" else []):
        f.parent.mkdir(parents=True, exist_ok=True)
        (f.parent / f"{f.name}.0123456789abcdef.partial").write_bytes(b"cut short")

    log = finish(encode(str(tiny_graph), "--out", str(out), *flags))
    assert f"encoded {N - 8 * done} nodes" in log
    assert tree(out) == tree(clean_cache)  # every file, byte for byte (int8: rows and scales)
    if storage == "int8":
        assert any(name.startswith("scales/c/") for name in tree(out))
    log = finish(encode(str(tiny_graph), "--out", str(out), *flags))
    assert log.strip().endswith(f"{out}: already complete; nothing to do")


def test_two_shards_fill_one_cache(tiny_graph: Path, clean_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache.zarr"
    procs = [encode(str(tiny_graph), "--out", str(out), *FLAGS, "--num-shards", "2", "--shard-id", str(i)) for i in (0, 1)]
    logs = [finish(p) for p in procs]
    assert all("encoded 16 nodes (shard" in log for log in logs), logs
    reader = open_cache(out)
    reader.check_complete()
    reader.check_graph(load_graph(tiny_graph))
    assert np.array_equal(reader.read(), open_cache(clean_cache).read())
    assert reader.node_ids.tolist() == open_cache(clean_cache).node_ids.tolist() == [f"paper-{v}" for v in load_graph("cora").node_ids[:N]]
    text, complete = status_text(out)
    assert complete and "blocks done 4/4 (8 nodes each)" in text


def test_status_exit_codes(cli, clean_cache: Path, tmp_path: Path) -> None:
    """Schedulers read the exit status: 0 complete, 3 (EXIT_INCOMPLETE) blocks missing, 2 no cache."""
    import shutil

    done = cli("encode", "--status", clean_cache)
    assert done.exit_code == 0 and done.stdout.endswith("  complete\n"), done.output
    partial = shutil.copytree(clean_cache, tmp_path / "partial.zarr")
    sorted((partial / "blocks").glob("*.done"))[2].unlink()
    missing = cli("encode", "--status", partial)
    assert missing.exit_code == 3, missing.output
    assert "blocks done 3/4 (8 nodes each)" in missing.stdout and "  complete\n" not in missing.stdout
    absent = cli("encode", "--status", tmp_path / "absent.zarr")
    assert absent.exit_code == 2 and str(tmp_path / "absent.zarr") in absent.output


def test_reader(clean_cache: Path) -> None:
    reader = open_cache(clean_cache)
    assert reader.layers == [0, 1, 2, 3, 4, 5, 6] and reader.num_nodes == N and reader.hidden_size == 384
    everything = reader.read()
    assert everything.shape == (N, 7, 384) and everything.dtype == np.float16
    nodes = np.array([31, 3, 20, 3])
    assert np.array_equal(reader.read(nodes, [6, 0]), everything[nodes][:, [6, 0]])
    reader._all, reader._fits_in_memory = None, lambda: False  # the out-of-memory path: chunk-ordered reads
    assert np.array_equal(reader.read(nodes, [6, 0]), everything[nodes][:, [6, 0]])
    with pytest.raises(InputError, match="was built from graph .* not from 'cora'"):
        reader.check_graph(load_graph("cora"))


def test_other_cache_refused_unless_overwrite(tiny_graph: Path, clean_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache.zarr"
    base = dict(graph=str(tiny_graph), out=out, model="minilm-l6", max_length=16, block_size=8, batch_tokens=64)
    run(EncodeConfig(**base, layers="0,6"))
    with pytest.raises(InputError) as err:
        run(EncodeConfig(**{**base, "model": "smollm2-135m"}))
    assert err.value.message.startswith(f"--out {out}: holds a cache of model 'minilm-l6' on graph '{tiny_graph}' with other settings (weights_sha256:")
    assert err.value.message.endswith("Pass --overwrite to replace it, or choose another --out")
    with pytest.raises(InputError, match="pooling: cache has 'mean', now 'last'"):
        run(EncodeConfig(**base, layers="0,6", pooling="last"))
    run(EncodeConfig(**base, layers="0,6", pooling="last", overwrite=True))
    assert open_cache(out).manifest["pooling"] == "last" and open_cache(out).layers == [0, 6]


def test_bad_input_exits_2_and_writes_nothing(tiny_graph: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache.zarr"
    cases = {
        ("--layers", "0,7"): "--layers 0,7: layer(s) 7 out of range; valid states are 0..6 (0 = embeddings, 6 = last layer)",
        ("--model", "gpt-17"): "--model gpt-17: not a built-in model, a local folder or an HF hub id (org/name). Built-ins: smollm2-135m",
        ("--pooling", "max", "--shard-id", "3"): "- --pooling max: choose one of mean, last\n- --shard-id 3: must be in 0..0 for --num-shards 1",
    }
    for args, message in cases.items():
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline", "encode", str(tiny_graph), "--out", str(out), *FLAGS, *args],
            cwd=REPO, capture_output=True, text=True,
        )
        assert proc.returncode == 2, proc.stderr
        assert flat(message) in flat(proc.stderr), proc.stderr
        assert not out.exists()


def test_non_finite_values_name_the_node(tmp_path: Path) -> None:
    manifest = small_manifest(layers=[0, 3], num_nodes=10, hidden_size=4, block_nodes=8, storage_dtype="float16")
    writer = CacheWriter.create_or_open(tmp_path / "c.zarr", manifest, np.arange(100, 110), {}, text_hashes(["t"] * 10))
    values = np.zeros((8, 2, 4), dtype=np.float32)
    values[5, 1, 2] = 1e6  # overflows float16
    with pytest.raises(PipelineError, match=r"node 105: non-finite value in LLM state 3 as float16; rerun with --storage-dtype float32"):
        writer.write_block(0, values, np.arange(100, 110))
    assert writer.done_blocks() == set()


def test_bench_cache_manifest_is_encodes(clean_cache: Path, tiny_graph: Path) -> None:
    """The bench's temporary cache gets the manifest ``pipeline encode`` writes (no model run here)."""
    from stage1_encode.bench import temp_cache_manifest
    from stage1_encode.cache.manifest import read_manifest

    written = read_manifest(clean_cache)
    enc = EncodeConfig(str(tiny_graph), model="minilm-l6", max_length=16, block_size=8, batch_tokens=64)
    bench = temp_cache_manifest(enc, load_graph(str(tiny_graph)), 8, written["layers"], written["hidden_size"], "float32")
    progress = {"completed_ranges", "encode_s", "encode_peak_memory_bytes", "self_check"}  # what the writer records as blocks complete, and the run's self-check
    assert set(bench) == set(written) - progress
    assert {k: v for k, v in written.items() if k not in progress} == {**bench, "num_nodes": N}


def test_bench_encode_json(tmp_path: Path) -> None:
    from stage1_encode.bench import BenchConfig, run_bench

    path = tmp_path / "bench.json"
    run_bench(BenchConfig(graph="cora", model="minilm-l6", limit=8, max_length=16, json_path=path))
    kind, figures = read_bench(path)
    assert kind == "encode"
    for key in ("texts_per_s", "naive_texts_per_s", "speedup_vs_naive", "flops_fraction", "bytes_per_node", "reference_bytes_per_node"):
        assert figures[key] > 0, key
    assert figures["reference_bytes_per_node"] == 7 * 384 * 4  # all 7 MiniLM states in fp32
    assert figures["bytes_per_node_float16"] == figures["bytes_per_node"] == 7 * 384 * 2
    assert figures["bytes_per_node_int8"] == 7 * 384 + 7 * 4  # int8 rows and a float32 scale per rung
    assert figures["device"] == "cpu" and figures["gpu_peak_memory_bytes"] is None
    assert figures["texts"] == 8 and figures["layers"] == [0, 1, 2, 3, 4, 5, 6]
