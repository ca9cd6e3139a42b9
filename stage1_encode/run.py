"""``run(EncodeConfig) -> cache path``: setup -> loop over this shard's node blocks -> summary.

Within a block, texts are sorted by token count and cut into batches under a token budget
(B * T <= batch_tokens), so little compute goes to padding; each block is committed as soon
as it is done. Batches depend only on the block's texts, which keeps a resumed run bit-identical.
"""

from __future__ import annotations

import functools
import hashlib
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from pipeline import __version__
from pipeline.core.errors import InputError
from pipeline.core.graph import TextGraph, load_graph
from pipeline.core.graph_format import graph_folder
from pipeline.core.options import flag_values
from pipeline.core.progress import log, progress, warn
from stage1_encode import cache as cache_format
from stage1_encode.config import EncodeConfig, default_out
from stage1_encode.layers import parse_layers
from stage1_encode.models import ModelSpec, check_max_length, check_weights, model_config, resolve_model, weights_hash

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "merges.txt", "vocab.json", "special_tokens_map.json", "tokenizer.model")


def model_shape(spec: ModelSpec) -> tuple[int, int]:
    """(num_states, hidden_size) from config.json, without importing transformers (fast no-op reruns)."""
    cfg = model_config(spec)
    return int(cfg["num_hidden_layers"]) + 1, int(cfg["hidden_size"])


def tokenizer_hash(spec: ModelSpec) -> str:
    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        p = Path(spec.path) / name
        if p.is_file():
            h.update(name.encode() + p.read_bytes())
    return h.hexdigest()


def pick_device(config: EncodeConfig) -> tuple[str, str]:
    """(device, compute dtype name): bf16 on GPU, fp32 on CPU unless told."""
    from pipeline.core.devices import check_device

    import torch

    check_device(config.device, "--device")
    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is visible; use --device cpu")
    dtype = config.dtype if config.dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")
    return device, dtype


def build_manifest(config: EncodeConfig, graph: TextGraph, spec: ModelSpec, layers: list[int], hidden: int, dtype: str) -> dict:
    itemsize = 2 if config.storage_dtype == "float16" else 4
    return {
        "format": cache_format.FORMAT,
        "model": config.model,
        "model_path": spec.path,
        "weights_sha256": weights_hash(spec.path),
        "tokenizer": tokenizer_hash(spec),
        "max_length": config.max_length,
        "pooling": config.pooling,
        "layers": layers,
        "compute_dtype": dtype,
        "storage_dtype": config.storage_dtype,
        "graph_source": graph.source,
        "graph_fingerprint": graph.fingerprint,
        "num_nodes": graph.num_nodes,
        "hidden_size": hidden,
        "chunk_nodes": cache_format.chunk_nodes_for(len(layers), hidden, itemsize, config.block_size),
        "block_nodes": config.block_size,
        "num_shards": config.num_shards,
        "batch_tokens": config.batch_tokens,
        "backend": config.backend,
        "package_version": __version__,
    }


def make_batches(lengths: np.ndarray, batch_tokens: int) -> list[np.ndarray]:
    """Positions sorted by length, cut so that (batch size) * (longest length) <= batch_tokens."""
    order = np.argsort(lengths, kind="stable")
    batches, current = [], []
    for i in order:
        if current and (len(current) + 1) * int(lengths[i]) > batch_tokens:
            batches.append(np.asarray(current))
            current = []
        current.append(i)
    if current:
        batches.append(np.asarray(current))
    return batches


def encode_block(stepper, texts: list[str], layers: list[int], config: EncodeConfig, on_batch) -> tuple[np.ndarray, int, int]:
    """Texts of one block -> ((n, S, H) float32, real tokens, padded tokens)."""
    import torch

    from stage1_encode.text_clip import token_ids

    ids = token_ids(stepper.loaded.tokenizer, texts, config.max_length)  # once per block; batches only pad
    lengths = np.asarray([len(row) for row in ids])
    out = np.empty((len(texts), len(layers), stepper.hidden_size), dtype=np.float32)
    real = padded = 0
    for idx in make_batches(lengths, config.batch_tokens):
        batch = stepper.pad([ids[i] for i in idx])
        with torch.inference_mode():
            out[idx] = stepper.encode_tokens(batch, layers, config.pooling).cpu().numpy()  # (B, S, H)
        n_real, n_pad = int(batch.attention_mask.sum()), batch.input_ids.numel()
        real, padded = real + n_real, padded + n_pad
        on_batch(len(idx), n_real)
    return out, real, padded


class Encoder:
    """The loaded model of one backend: ``encode(texts, layers, config, on_batch)`` and ``close()``."""

    def __init__(self, encode, close=lambda: None) -> None:
        self.encode, self.close = encode, close


def make_encoder(config: EncodeConfig, spec: ModelSpec, device: str, dtype: str) -> Encoder:
    """Load the model on the chosen backend (a damaged model folder is refused here)."""
    import torch

    from stage1_encode.models import load_model
    from stage1_encode.stepping import LayerStepper

    if device == "cpu" and dtype == "float32":
        warn("no GPU: encoding on CPU in float32 (slow; fine for small graphs)")
    if config.backend == "vllm":
        from stage1_encode import vllm_backend

        engine = vllm_backend.VllmEncoder(spec, config.max_length, dtype, max_num_batched_tokens=max(config.batch_tokens, config.max_length))
        return Encoder(functools.partial(vllm_backend.encode_block, engine), engine.close)
    return Encoder(functools.partial(encode_block, LayerStepper(load_model(spec, device, getattr(torch, dtype)))))


def run(config: EncodeConfig) -> Path:
    """Encode (this shard of) a graph into a cache; returns the cache path. Quick no-op when done."""
    config.validate()
    graph = load_graph(config.graph)
    spec = resolve_model(config.model, config.trust_remote_code)
    if config.backend == "vllm":
        from stage1_encode.vllm_backend import check_architecture

        check_architecture(spec)  # refuse (naming --backend hf) before anything is written
    num_states, hidden = model_shape(spec)
    layers = parse_layers(config.layers, num_states)
    device, dtype = pick_device(config)
    check_max_length(spec, config.max_length)
    check_weights(spec)
    out = Path(config.out) if config.out is not None else default_out(graph.name, config.model)
    # every check before the first write (the weights hash memo, the cache folder)
    exists = cache_format.claim(out, config.overwrite, inputs=[graph_folder(graph), spec.path])
    manifest = build_manifest(config, graph, spec, layers, hidden, dtype)
    resolved = flag_values(replace(config, out=out, layers=",".join(map(str, layers)), dtype=dtype, device=device))
    # a new cache is created only once the model has loaded (a damaged model leaves nothing behind)
    encoder = None if exists else make_encoder(config, spec, device, dtype)
    writer = cache_format.CacheWriter.create_or_open(out, manifest, graph.node_ids, resolved, config.overwrite)

    mine = cache_format.shard_blocks(writer.n_blocks, config.num_shards, config.shard_id)
    damaged = writer.damaged_blocks()  # one pass over the chunk files (0.85 s at 1M nodes)
    for b in sorted(set(damaged) & set(mine)):
        warn(f"block {b}: {damaged[b]}; re-encoding it")
    done = cache_format.marked_blocks(out) - set(damaged)
    todo = [b for b in mine if b not in done]
    shard = f" (shard {config.shard_id}/{config.num_shards})" if config.num_shards > 1 else ""
    if not todo:
        complete = writer.finish()
        log(f"{out}: already {'complete' if complete else 'done for this shard'}{shard}; nothing to do")
        return out

    encoder = encoder or make_encoder(config, spec, device, dtype)
    encode = encoder.encode
    n_todo = sum(e - s for s, e in (cache_format.block_range(b, graph.num_nodes, config.block_size) for b in todo))
    log(f"encoding {n_todo} of {graph.num_nodes} nodes{shard} with {config.model} on {config.backend} ({len(layers)} rungs {layers}, {device} {dtype}) -> {out}")
    start, real, padded, tokens_done = time.perf_counter(), 0, 0, 0
    with progress(n_todo, "encode", unit="texts") as bar:

        def on_batch(n: int, n_tokens: int) -> None:
            nonlocal tokens_done
            tokens_done += n_tokens
            bar.advance(n, tok_s=tokens_done / max(time.perf_counter() - start, 1e-9))

        for b in todo:
            lo, hi = cache_format.block_range(b, graph.num_nodes, config.block_size)
            values, r, p = encode(graph.texts[lo:hi], layers, config, on_batch)
            writer.write_block(b, values, graph.node_ids)
            real, padded = real + r, padded + p
    encoder.close()  # vLLM: stops its engine process and frees its shared memory
    complete = writer.finish()
    elapsed = time.perf_counter() - start
    log(
        f"encoded {n_todo} nodes{shard} in {elapsed:.1f}s ({n_todo / elapsed:.1f} texts/s, {real / elapsed:.0f} tokens/s); "
        f"{real} tokens, padding {1 - real / max(padded, 1):.1%}; cache {cache_format.disk_bytes(out) / 1e6:.1f} MB on disk; "
        + ("complete" if complete else f"{writer.blocks_left} block(s) left for other shards")
    )
    return out
