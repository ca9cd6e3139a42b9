"""``pipeline encode --reuse``: an incremental encode equals a full encode of the new graph bit
for bit (added, edited and removed nodes, rows shifted across block boundaries, shards, a
SIGKILL and resume); other settings, other format versions and damaged caches are refused; the old cache
is only read.

Real MiniLM on Cora texts cut to 2-10 words, so token counts differ within every block.
"""

from __future__ import annotations

import json
import os
import re
import shutil
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

from pipeline.core.errors import InputError
from pipeline.core.graph import load_graph
from stage1_encode.config import EncodeConfig
from stage1_encode.run import run

REPO = Path(__file__).resolve().parents[1]
SETTINGS = dict(model="minilm-l6", max_length=16, block_size=8, batch_tokens=64, device="cpu")
FLAGS = ["--model", "minilm-l6", "--max-length", "16", "--block-size", "8", "--batch-tokens", "64", "--device", "cpu"]
REMOVED, EDITED = {3, 17, 30}, {5, 22}


def write(folder: Path, ids: list[int], texts: list[str]) -> Path:
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"node_id": pa.array(ids, pa.int64()), "text": texts}), folder / "nodes.parquet")
    pq.write_table(pa.table({"src": pa.array(ids[:-1], pa.int64()), "dst": pa.array(ids[1:], pa.int64())}), folder / "edges.parquet")
    return folder


@pytest.fixture(scope="module")
def versions(tmp_path_factory) -> tuple[Path, Path]:
    """(old, new) graph folders: new drops 3 nodes, edits 2 texts, inserts 2 nodes mid-order
    and appends 5, so most unchanged rows move to another row and block."""
    cora = load_graph("cora")
    text = {i: " ".join(cora.texts[i].split()[: 2 + i % 9]) for i in range(60)}
    root = tmp_path_factory.mktemp("versions")
    old_ids = list(range(40))
    old = write(root / "old", old_ids, [text[i] for i in old_ids])
    new_ids = [i for i in old_ids if i not in REMOVED]
    new_ids[10:10] = [50, 51]
    new_ids += [40, 41, 42, 43, 44]
    new_texts = [text[i] + (" (revised)" if i in EDITED else "") for i in new_ids]
    return old, write(root / "new", new_ids, new_texts)


def encode_here(graph: Path, out: Path, **kw) -> Path:
    """``run`` single-threaded, as the subprocesses below (OMP_NUM_THREADS=1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run(EncodeConfig(str(graph), out, **{**SETTINGS, **kw}))
    finally:
        torch.set_num_threads(threads)


def tree(path: Path) -> dict[str, bytes]:
    """Every file's bytes; the saved config is compared without its ``out`` and ``reuse`` paths,
    the block marks and manifest without the seconds they record."""
    files = {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
    config = json.loads(files.pop("encode_config.json"))
    config.pop("out"), config.pop("reuse", None)  # flags only: absent when not given
    files["encode_config.json"] = json.dumps(config).encode()
    for name in [n for n in files if n.startswith("blocks/")] + ["manifest.json"]:  # without the seconds and memory measured
        data = json.loads(files[name])
        assert data.pop("seconds" if name.startswith("blocks/") else "encode_s") >= 0, name
        for measured in ("peak_bytes", "encode_peak_memory_bytes"):
            assert data.pop(measured, 0) >= 0, name
        if name == "manifest.json" and "self_check" in data:  # and the seconds of its self-check
            assert data["self_check"].pop("seconds") >= 0
        files[name] = json.dumps(data).encode()
    return files


def is_value_chunk(name: str) -> bool:
    return name.startswith(("states/c/", "scales/c/"))


def assert_same_cache(got: Path, want: Path, skip: tuple[str, ...] = ()) -> None:
    """Every file but the value chunks (and ``skip``) byte for byte; values within one storage
    step (one float16 spacing, or for int8 the row's scale) plus float32 noise: a value near
    zero rounds at a finer float16 spacing than the noise of the sums that made it."""
    from stage1_encode.cache.reader import open_cache

    files_got, files_want = tree(got), tree(want)
    assert files_got.keys() == files_want.keys()
    assert ({n: v for n, v in files_got.items() if not is_value_chunk(n) and n not in skip}
            == {n: v for n, v in files_want.items() if not is_value_chunk(n) and n not in skip})
    reference = open_cache(want)
    a, b = open_cache(got).read().astype(np.float32), reference.read().astype(np.float32)  # (N, S, H), int8 dequantized
    if reference.manifest["storage_dtype"] == "int8":
        step = reference.scales()[..., None]  # (N, S, 1)
    else:
        step = np.spacing(np.maximum(np.abs(a), np.abs(b)).astype(np.float16)).astype(np.float32)
    noise = 1e-5 * np.abs(b).max(-1, keepdims=True)  # float32 rounding, relative to the row (measured: up to 2.2e-7)
    assert (np.abs(a - b) <= step + noise).all(), float(((np.abs(a - b) - step) / noise).max())


def assert_copied_rows(out: Path, old: Path, new_graph: Path) -> None:
    """Rows of texts the old cache holds unchanged are its rows, byte for byte."""
    from stage1_encode.cache.reader import open_cache

    old_reader = open_cache(old)
    row_of = {i: r for r, i in enumerate(old_reader.node_ids.tolist())}
    kept = [(r, row_of[i]) for r, i in enumerate(load_graph(new_graph).node_ids.tolist()) if i in row_of and i not in EDITED]
    rows_new, rows_old = map(np.array, zip(*kept))
    assert len(kept) == 35 and np.array_equal(open_cache(out).read(rows_new), old_reader.read(rows_old))


@pytest.fixture(scope="module")
def caches(versions, tmp_path_factory) -> tuple[Path, Path]:
    """(old cache, full encode of the new graph)."""
    old, new = versions
    root = tmp_path_factory.mktemp("caches")
    return encode_here(old, root / "old.zarr"), encode_here(new, root / "full.zarr")


def test_reuse_equals_full_encode_and_reads_old_only(versions, caches, tmp_path, capsys) -> None:
    _, new = versions
    old_cache, full = caches
    before = tree(old_cache)
    capsys.readouterr()
    out = encode_here(new, tmp_path / "new.zarr", reuse=old_cache)
    log = " ".join(capsys.readouterr().err.split())
    assert_same_cache(out, full)  # ids, text hashes, manifest, block marks byte for byte; states to one step
    assert_copied_rows(out, old_cache, new)
    assert tree(old_cache) == before  # the old cache is an input: untouched
    assert f"reuse {old_cache}: 35 rows to copy, 7 new, 2 edited, 3 dropped" in log
    assert "encoding 9 texts (7 new, 2 edited) of 44 nodes" in log
    assert "encoded 44 nodes in" in log and f"35 rows reused from {old_cache}, 9 texts through the LLM (7 new, 2 edited), 3 dropped;" in log
    # the LLM ran on the new and edited texts' tokens only
    from stage1_encode.models import load_model, resolve_model
    from stage1_encode.text_clip import token_ids

    graph = load_graph(new)
    tokenizer = load_model(resolve_model("minilm-l6"), "cpu").tokenizer
    changed = [t for i, t in zip(graph.node_ids.tolist(), graph.texts) if i >= 40 or i in EDITED]
    assert f" {sum(map(len, token_ids(tokenizer, changed, 16)))} LLM tokens," in log


def test_reuse_of_an_int8_cache_equals_its_full_encode(versions, tmp_path) -> None:
    """Copied int8 rows are read back as float32 and quantized again: the same bytes, scales included."""
    old, new = versions
    old_cache = encode_here(old, tmp_path / "old.zarr", storage_dtype="int8")
    full = encode_here(new, tmp_path / "full.zarr", storage_dtype="int8")
    out = encode_here(new, tmp_path / "new.zarr", storage_dtype="int8", reuse=old_cache)
    assert any(name.startswith("scales/") for name in tree(out))
    assert_same_cache(out, full)
    assert_copied_rows(out, old_cache, new)


def test_reuse_with_shards(versions, caches, tmp_path) -> None:
    _, new = versions
    old_cache, full = caches
    out = tmp_path / "new.zarr"
    for shard in (1, 0):
        encode_here(new, out, reuse=old_cache, num_shards=2, shard_id=shard)
    manifests = [json.loads((cache / "manifest.json").read_text()) for cache in (out, full)]
    assert manifests[0].pop("num_shards") == 2 and manifests[1].pop("num_shards") == 1
    # the self-check of the run that created each cache: its first texts (here shard 1's) pass exactly
    assert manifests[0].pop("self_check")["max_rel_deviation"] == manifests[1].pop("self_check")["max_rel_deviation"] == 0.0
    for m in manifests:  # time and peak memory of the processes that encoded it
        assert m.pop("encode_s") >= 0 and m.pop("encode_peak_memory_bytes") > 0
    assert manifests[0] == manifests[1]
    assert_same_cache(out, full, skip=("manifest.json", "encode_config.json"))  # the manifest but for num_shards
    assert_copied_rows(out, old_cache, new)


def test_killed_reuse_encode_resumes(versions, caches, tmp_path) -> None:
    _, new = versions
    old_cache, full = caches
    out = tmp_path / "new.zarr"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "encode", str(new), "--out", str(out), "--reuse", str(old_cache), *FLAGS],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.time() + 600  # process start alone can take minutes on a loaded 2-core machine
    while not list((out / "blocks").glob("*.done")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    done = len(list((out / "blocks").glob("*.done")))
    assert 0 < done < 6, done  # really killed mid-run (6 blocks)
    encode_here(new, out, reuse=old_cache)
    assert_same_cache(out, full)
    assert_copied_rows(out, old_cache, new)


def test_other_settings_and_damaged_caches_refused(versions, caches, tmp_path, cli) -> None:
    _, new = versions
    old_cache, _ = caches
    out = tmp_path / "new.zarr"
    result = cli("encode", new, "--out", out, "--reuse", old_cache, *FLAGS[:2], "--max-length", "12", *FLAGS[4:], "--pooling", "last")
    assert result.exit_code == 2, result.output
    message = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())
    assert (
        f"--reuse {old_cache}: encoded with other settings, its rows would differ from this encode's: "
        f"--max-length: {old_cache} has max_length 16, this run 12; --pooling: {old_cache} has pooling 'mean', this run 'last'. "
        "Give the old cache's settings, or encode without --reuse"
    ) in message, message
    assert not out.exists()

    with pytest.raises(InputError, match=r"--model: .* has weights_sha256 'minilm-l6'"):
        encode_here(new, out, reuse=old_cache, model="smollm2-135m")
    with pytest.raises(InputError, match="is the --out cache itself"):
        encode_here(new, old_cache, reuse=old_cache)
    with pytest.raises(InputError, match="--reuse .*nope: not an encode cache"):
        (tmp_path / "nope").mkdir()
        encode_here(new, out, reuse=tmp_path / "nope")

    damaged = tmp_path / "damaged.zarr"  # its text hashes lost
    shutil.copytree(old_cache, damaged)
    shutil.rmtree(damaged / "text_hashes")
    with pytest.raises(InputError) as err:
        encode_here(new, out, reuse=damaged)
    assert err.value.message.startswith(f"--reuse {damaged}: the text_hashes array is missing or unreadable; rebuild it with `pipeline encode ")
    shutil.copytree(old_cache / "text_hashes", damaged / "text_hashes")
    manifest = json.loads((damaged / "manifest.json").read_text())  # another format version
    (damaged / "manifest.json").write_text(json.dumps({**manifest, "format_version": 2}))
    with pytest.raises(InputError, match=rf"--reuse {re.escape(str(damaged / 'manifest.json'))}: format version 2, this version of the pipeline reads 1; re-encode the cache with `pipeline encode "):
        encode_here(new, out, reuse=damaged)
    assert not out.exists()
