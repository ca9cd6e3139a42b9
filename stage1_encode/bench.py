"""``pipeline bench encode``: our encode path against a naive loop, on the same texts.

- encode: texts sorted by length within blocks, batches under a token budget, every selected
  state pooled and written to a (temporary) cache, exactly as ``pipeline encode`` does;
- naive: fixed batches of 32 in graph order, padded to ``max_length``, one HF forward, the
  last state mean-pooled, nothing written (the usual notebook loop).

FLOPs use the standard estimate 2 * (non-embedding parameters) per real token plus
attention 4 * L * T * H per text (T real tokens), divided by the time, as a fraction of a
measured fp32 (or compute-dtype) matmul rate on the same device.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.bench_json import claim_bench, write_bench
from pipeline.core.errors import InputError
from pipeline.core.graph import TextGraph, load_graph
from pipeline.core.options import argument, device_option, json_option, option
from pipeline.core.progress import log
from stage1_encode.cache.geometry import DEFAULT_BLOCK_NODES, block_range, disk_bytes
from stage1_encode.cache.manifest import text_hashes
from stage1_encode.cache.quantize import STORAGE_DTYPES, stored_bytes_per_node
from stage1_encode.cache.writer import CacheWriter
from stage1_encode.config import EncodeConfig, model_option

NAIVE_BATCH = 32


@dataclass
class BenchConfig:
    graph: str = argument("cora", "Built-in dataset or graph folder.", metavar="GRAPH")
    model: str = model_option()
    limit: int = option(256, "Encode the first N texts (0 = all).")
    max_length: int = option(256, "Tokens per text.")
    batch_tokens: int = option(4096, "Token budget per batch of `encode`.")
    layers: str | None = option(None, "States `encode` keeps (default: ~7 spread evenly).")
    device: str = device_option()
    json_path: Path | None = json_option()
    backend: str = option("hf", "vllm: also time --backend vllm on the same texts and report both.")


def matmul_flops(device, dtype, n: int = 1024, min_s: float = 1.0) -> float:
    """Measured dense matmul rate (FLOP/s) of this device and dtype."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_s:
        a @ b
        reps += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start)


def flops_per_text(model, num_tokens: np.ndarray) -> np.ndarray:
    """Forward FLOPs per text of ``num_tokens`` real tokens (weights + attention scores)."""
    params = sum(p.numel() for name, p in model.named_parameters() if "embed" not in name)
    cfg = model.config
    return 2 * params * num_tokens + 4 * cfg.num_hidden_layers * cfg.hidden_size * num_tokens.astype(np.float64) ** 2


def temp_cache_manifest(enc: EncodeConfig, graph: TextGraph, n: int, layers: list[int], hidden: int, dtype: str) -> dict:
    """The manifest of the bench's temporary cache: the one ``pipeline encode`` writes, for the first ``n`` nodes."""
    from stage1_encode.models import resolve_model
    from stage1_encode.run import build_manifest

    return build_manifest(enc, graph, resolve_model(enc.model), layers, hidden, dtype, num_nodes=n)


def run_bench(config: BenchConfig) -> dict:
    import torch

    from pipeline.core.devices import peak_memory, reset_peak_memory
    from stage1_encode.layers import parse_layers
    from stage1_encode.models import load_model, resolve_model
    from stage1_encode.run import encode_block, pick_device
    from stage1_encode.stepping import LayerStepper

    enc = EncodeConfig(graph=config.graph, model=config.model, layers=config.layers, max_length=config.max_length,
                       batch_tokens=config.batch_tokens, device=config.device, backend=config.backend)
    enc.validate()
    if config.limit < 0:
        raise InputError(f"--limit {config.limit}: must be >= 0 (0 encodes every text)")
    if config.json_path is not None:
        claim_bench(config.json_path, "encode")
    if config.backend == "vllm":
        from stage1_encode.vllm_backend import check_architecture

        check_architecture(resolve_model(config.model))  # refuse BERT-family before any work
    graph = load_graph(config.graph)
    n = graph.num_nodes if config.limit == 0 else min(config.limit, graph.num_nodes)
    texts = graph.texts[:n]
    device, dtype = pick_device(enc)
    stepper = LayerStepper(load_model(resolve_model(config.model), device, getattr(torch, dtype)))
    layers = parse_layers(config.layers, stepper.num_states)
    model, tok = stepper.model, stepper.loaded.tokenizer
    sync = torch.cuda.synchronize if stepper.loaded.device.type == "cuda" else (lambda: None)
    log(f"bench encode: {n} texts of {graph.name}, {config.model} on {device} {dtype}, {len(layers)} rungs {layers}")
    stepper.encode_batch(texts[:2], layers, "mean", 16)  # warm-up (first-call allocations)
    reset_peak_memory(device)
    lengths = np.asarray([len(ids) for ids in tok(texts, truncation=True, max_length=config.max_length)["input_ids"]])

    # -- our path: blocks -> sorted token-budget batches -> all rungs -> cache on disk
    with tempfile.TemporaryDirectory() as tmp:
        manifest = temp_cache_manifest(enc, graph, n, layers, stepper.hidden_size, dtype)
        block = manifest["block_nodes"]
        writer = CacheWriter.create_or_open(Path(tmp) / "bench.zarr", manifest, graph.node_ids[:n], {}, text_hashes(texts))
        start = time.perf_counter()
        padded = 0
        for b in range(writer.n_blocks):
            lo, hi = block_range(b, n, block)
            values, _, p = encode_block(stepper, texts[lo:hi], layers, enc, lambda *_: None)
            writer.write_block(b, values, graph.node_ids)
            padded += p
        sync()
        ours_s = time.perf_counter() - start
        disk = disk_bytes(Path(tmp) / "bench.zarr")

    # -- naive loop: batch 32, padded to max_length, last state only, nothing kept
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, n, NAIVE_BATCH):
            batch = tok(texts[i : i + NAIVE_BATCH], padding="max_length", truncation=True, max_length=config.max_length, return_tensors="pt")
            batch = {k: v.to(stepper.loaded.device) for k, v in batch.items()}
            h = model(**batch).last_hidden_state  # (B, T, H)
            m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
            ((h * m).sum(1) / m.sum(1)).float().cpu()  # (B, H) mean-pooled, then dropped
    sync()
    naive_s = time.perf_counter() - start

    vllm_result = _bench_vllm(config, enc, texts, layers, dtype, stepper.encode_batch) if config.backend == "vllm" else {}

    peak = matmul_flops(stepper.loaded.device, getattr(torch, dtype))
    useful = float(flops_per_text(model, lengths).sum())
    real_tokens = int(lengths.sum())
    result = {
        "graph": graph.name, "model": config.model, "device": device, "dtype": dtype, "texts": n,
        "max_length": config.max_length, "layers": layers, "tokens": real_tokens, "hidden_size": stepper.hidden_size,
        "padding_fraction": 1 - real_tokens / max(padded, 1),
        "texts_per_s": n / ours_s, "tokens_per_s": real_tokens / ours_s,
        "naive_texts_per_s": n / naive_s, "naive_tokens_per_s": real_tokens / naive_s,
        "speedup_vs_naive": naive_s / ours_s,
        "matmul_flops_per_s": peak, "model_flops_per_s": useful / ours_s, "flops_fraction": useful / ours_s / peak,
        # Array bytes per node (S * H * 2 in float16): on a few texts, the padded last chunk and
        # the metadata would dominate a disk-size figure; that one is reported beside it.
        "bytes_per_node": stored_bytes_per_node(len(layers), stepper.hidden_size, manifest["storage_dtype"]),
        "disk_bytes_per_node": disk / n,
        "reference_bytes_per_node": stepper.num_states * stepper.hidden_size * 4,
        # per --storage-dtype: S x H values (+ S float32 scales for int8)
        **{f"bytes_per_node_{d}": stored_bytes_per_node(len(layers), stepper.hidden_size, d)
           for d in STORAGE_DTYPES},
        "gpu_peak_memory_bytes": peak_memory(device),
    }
    result["bytes_ratio_vs_reference"] = result["bytes_per_node"] / result["reference_bytes_per_node"]
    result["int8_bytes_ratio_vs_reference"] = result["bytes_per_node_int8"] / result["reference_bytes_per_node"]
    if vllm_result:
        result.update(vllm_result, vllm_speedup_vs_hf=vllm_result["vllm_texts_per_s"] / result["texts_per_s"])
    _print(result)
    if config.json_path is not None:
        write_bench(config.json_path, "encode", result)
    return result


def _bench_vllm(config: BenchConfig, enc: EncodeConfig, texts: list[str], layers: list[int], dtype: str, hf_encode_batch) -> dict:
    """--backend vllm on the same texts, blocks and layers as the encode path (cache write excluded).

    Also checks the two backends agree on a few texts (largest relative error of the pooled states).
    """
    from stage1_encode import vllm_backend
    from stage1_encode.models import resolve_model

    spec = resolve_model(config.model)
    encoder = vllm_backend.VllmEncoder(spec, config.max_length, dtype, max_num_batched_tokens=max(config.batch_tokens, config.max_length))
    try:
        encoder.encode_batch(texts[:2], layers, "mean", 16)  # warm-up (hooks installed, first-call allocations)
        block = DEFAULT_BLOCK_NODES
        start = time.perf_counter()
        for lo in range(0, len(texts), block):
            vllm_backend.encode_block(encoder, texts[lo : lo + block], layers, enc, lambda *_: None)
        seconds = time.perf_counter() - start
        few = texts[:8]
        a, b = encoder.encode_batch(few, layers, enc.pooling, config.max_length), hf_encode_batch(few, layers, enc.pooling, config.max_length).cpu()
        err = float(((a - b).norm(dim=-1) / b.norm(dim=-1)).max())
    finally:
        encoder.close()
    return {"vllm_texts_per_s": len(texts) / seconds, "vllm_engine_start_s": encoder.startup_s, "vllm_max_rel_err_vs_hf": err}


def _print(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"bench encode: {r['model']} on {r['graph']} ({r['texts']} texts, max length {r['max_length']}, {r['device']} {r['dtype']})")
    for col in ("path", "texts/s", "tokens/s", "what it does"):
        t.add_column(col)
    t.add_row("encode", f"{r['texts_per_s']:.2f}", f"{r['tokens_per_s']:.0f}",
              f"sorted, <= token budget, {len(r['layers'])} rungs pooled + written (padding {r['padding_fraction']:.1%})")
    if "vllm_texts_per_s" in r:
        t.add_row("vllm", f"{r['vllm_texts_per_s']:.2f}", f"{r['vllm_texts_per_s'] / r['texts'] * r['tokens']:.0f}",
                  f"--backend vllm, same blocks and rungs (engine start {r['vllm_engine_start_s']:.0f}s not timed; max rel err vs hf {r['vllm_max_rel_err_vs_hf']:.1e})")
    t.add_row("naive", f"{r['naive_texts_per_s']:.2f}", f"{r['naive_tokens_per_s']:.0f}", f"batch {NAIVE_BATCH}, padded to max length, last state only")
    Console().print(t)
    print(f"speedup vs naive: {r['speedup_vs_naive']:.2f}x (target >= 1.2)")
    print(f"model FLOPs: {r['model_flops_per_s'] / 1e9:.1f} GFLOP/s = {r['flops_fraction']:.1%} of measured matmul {r['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s")
    ref = r["reference_bytes_per_node"]
    print(f"cache bytes/node ({len(r['layers'])} rungs): float16 {r['bytes_per_node_float16']} = 1/{ref / r['bytes_per_node_float16']:.1f} "
          f"(target <= 1/8), int8 {r['bytes_per_node_int8']} = 1/{ref / r['bytes_per_node_int8']:.1f} (target <= 1/16) "
          f"of the reference format (all {ref // (4 * r['hidden_size'])} states, float32: {ref})")
    if r.get("gpu_peak_memory_bytes") is not None:
        print(f"peak GPU memory: {r['gpu_peak_memory_bytes'] / 2**30:.2f} GiB")
