"""The raw chunk reads (stage1_encode/cache/raw.py) equal zarr's own reads of the same cache,
for every storage dtype the writer produces (float16, float32, int8 with its float32 scales)
and for the one codec it writes (``bytes``, little endian, no compressor); a cache whose
states use another codec is read through zarr, with the same values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cache_helpers import small_manifest

from stage1_encode.cache.geometry import block_range, num_blocks
from stage1_encode.cache.manifest import text_hashes
from stage1_encode.cache.quantize import STORAGE_DTYPES, dequantize_int8
from stage1_encode.cache.raw import is_raw_layout
from stage1_encode.cache.reader import DENSE_CHUNK_ROWS, open_cache
from stage1_encode.cache.writer import CacheWriter

NODES, LAYERS, HIDDEN, BLOCK = 37, [0, 2, 5], 6, 16  # 37 nodes: the last chunk holds 5 of its 16 rows
# the codec chain the writer gives the states (single bytes have no byte order)
WRITER_CODECS = {"float16": [{"name": "bytes", "configuration": {"endian": "little"}}], "int8": [{"name": "bytes"}]}
WRITER_CODECS["float32"] = WRITER_CODECS["float16"]


def write_cache(path: Path, storage_dtype: str) -> Path:
    manifest = small_manifest(layers=LAYERS, num_nodes=NODES, hidden_size=HIDDEN, block_nodes=BLOCK, storage_dtype=storage_dtype)
    ids = np.arange(NODES) * 10
    writer = CacheWriter.create_or_open(path, manifest, ids, {}, text_hashes([str(i) for i in ids]))
    rng = np.random.default_rng(7)
    for b in range(num_blocks(NODES, BLOCK)):
        s, e = block_range(b, NODES, BLOCK)
        writer.write_block(b, rng.standard_normal((e - s, len(LAYERS), HIDDEN)).astype(np.float32) * 3, ids)
    assert writer.finish()
    return path


def zarr_values(path: Path) -> np.ndarray:
    """(N, S, H) what zarr itself reads from the cache, dequantized for int8."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    states = np.asarray(group["states"][:])
    if states.dtype == np.int8:
        return dequantize_int8(states, np.asarray(group["scales"][:], dtype=np.float32))
    return states


def recompress_states(path: Path) -> None:
    """Rewrite the states array with a zstd compressor (same values, another codec chain)."""
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    old = group["states"]
    values, chunks = np.asarray(old[:]), old.chunks
    del group["states"]
    with zarr.config.set({"array.write_empty_chunks": True}):
        group.create_array("states", data=values, chunks=chunks, compressors=zarr.codecs.ZstdCodec(level=1))


def all_reads(reader) -> dict[str, np.ndarray]:
    """Every read path of the reader, each as (n, S', H) with the nodes and rungs it was asked for."""
    dense = np.arange(16, 16 + DENSE_CHUNK_ROWS + 1)  # one chunk read whole
    sparse = np.array([36, 3, 35, 0, 20, 3])  # single rows (pread), unsorted, repeated, the last row
    return {
        "read_all": reader.read_all(),
        "read_all_rungs": reader.read_all([2, 0]),
        "read_chunk": np.concatenate([reader.read_chunk(i) for i in range(num_blocks(NODES, reader.chunk_nodes))]),
        "rows_dense": reader.read_rows(dense),
        "rows_sparse": reader.read_rows(sparse),
        "rows_sparse_rungs": reader.read_rows(sparse, [1]),
        "rows_mixed_rungs": reader.read_rows(np.concatenate([dense, sparse]), [2, 1]),
    }


def expected(truth: np.ndarray) -> dict[str, np.ndarray]:
    dense = np.arange(16, 16 + DENSE_CHUNK_ROWS + 1)
    sparse = np.array([36, 3, 35, 0, 20, 3])
    return {
        "read_all": truth, "read_all_rungs": truth[:, [2, 0]], "read_chunk": truth, "rows_dense": truth[dense],
        "rows_sparse": truth[sparse], "rows_sparse_rungs": truth[sparse][:, [1]],
        "rows_mixed_rungs": truth[np.concatenate([dense, sparse])][:, [2, 1]],
    }


@pytest.mark.parametrize("storage_dtype", STORAGE_DTYPES)
def test_raw_reads_equal_zarr_reads(tmp_path: Path, storage_dtype: str) -> None:
    path = write_cache(tmp_path / "c.zarr", storage_dtype)
    meta = json.loads((path / "states" / "zarr.json").read_text())
    assert meta["codecs"] == WRITER_CODECS[storage_dtype]  # the codec chain the raw reads assume: a new one needs a case here
    assert is_raw_layout(path / "states")
    truth = zarr_values(path)
    assert truth.dtype == (np.float32 if storage_dtype == "int8" else np.dtype(storage_dtype))
    reader = open_cache(path)
    assert reader._raw is not None  # the reads below go to the chunk files, not through zarr
    for name, got in all_reads(reader).items():
        want = expected(truth)[name]
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), name
    reader.close()


@pytest.mark.parametrize("storage_dtype", STORAGE_DTYPES)
def test_another_codec_is_read_through_zarr_with_the_same_values(tmp_path: Path, storage_dtype: str) -> None:
    path = write_cache(tmp_path / "c.zarr", storage_dtype)
    truth = zarr_values(path)
    recompress_states(path)
    assert not is_raw_layout(path / "states")
    reader = open_cache(path)
    assert reader._raw is None
    for name, got in all_reads(reader).items():
        assert got.tobytes() == expected(truth)[name].tobytes(), name
