"""``run(EncodeConfig) -> cache path``: setup -> loop over this shard's node blocks -> summary.

The LLM's texts are taken a block at a time (an update with ``--reuse`` gathers the few texts
of up to 64 blocks), grouped by token count, and each group is cut into batches under a
token budget (B * T <= batch_tokens): no batch holds padding, so no compute goes to it, and a
node's row depends on its own text, not on which texts share its batch, up to the last bits
a batch of another size can round differently (padded batches changed many more values:
measured on Cora with both built-in models). In a full encode a block's batches depend only
on its texts, so a resumed or sharded run is bit-identical to an uninterrupted one (an update's
windows span blocks: there, to one storage step), and ``--reuse`` can copy rows
of unchanged texts from an older cache (stage1_encode/reuse.py). Each block is committed as
soon as it is done.
"""

from __future__ import annotations

import functools
import hashlib
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from pipeline.core.graph import TextGraph, load_graph
from pipeline.core.graph_format import graph_folder
from pipeline.core.options import flag_values
from pipeline.core.progress import log, progress, warn
from stage1_encode import cache as cache_format
from stage1_encode.config import EncodeConfig, default_out
from stage1_encode.families import check_supported
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


def process_peak_bytes(device: str) -> int:
    """This process's peak memory so far, LLM loading included: on GPU the device's
    ``max_memory_allocated``, on CPU the peak resident set (``ru_maxrss``)."""
    import resource

    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


def pick_device(config: EncodeConfig) -> tuple[str, str]:
    """(device, compute dtype name): bf16 on GPU, fp32 on CPU unless told."""
    from pipeline.core.devices import is_cuda, resolve_device

    device = resolve_device(config.device)
    dtype = config.dtype if config.dtype != "auto" else ("bfloat16" if is_cuda(device) else "float32")
    return device, dtype


def build_manifest(config: EncodeConfig, graph: TextGraph, spec: ModelSpec, layers: list[int], hidden: int, dtype: str,
                   num_nodes: int | None = None) -> dict:
    """The manifest (:func:`stage1_encode.cache.new_manifest`) of ``config``'s cache of ``graph``,
    or of its first ``num_nodes`` nodes."""
    return cache_format.new_manifest(
        model=config.model, model_path=spec.path, weights_sha256=weights_hash(spec.path), tokenizer=tokenizer_hash(spec),
        max_length=config.max_length, pooling=config.pooling, layers=layers, compute_dtype=dtype,
        storage_dtype=config.storage_dtype, graph_source=graph.source, graph_fingerprint=graph.fingerprint,
        num_nodes=graph.num_nodes if num_nodes is None else num_nodes, hidden_size=hidden, block_nodes=config.block_size,
        num_shards=config.num_shards, batch_tokens=config.batch_tokens, backend=config.backend, model_tuning=tuning_record(spec),
    )


def tuning_record(spec: ModelSpec) -> dict | None:
    """What ``pipeline export`` recorded about how a tuned model was trained (run, arch, seed,
    training wall time), so that a cache of it carries the fine-tuning cost; None otherwise."""
    from stage1_encode.models import read_export_record

    return read_export_record(spec.path)


def make_batches(lengths: np.ndarray, batch_tokens: int) -> list[np.ndarray]:
    """Positions grouped by equal length (shortest first), each group cut into batches of at
    most ``batch_tokens // length`` texts: no padding anywhere."""
    batches = []
    for length in np.unique(lengths).tolist():
        same = np.flatnonzero(lengths == length)
        size = max(batch_tokens // max(length, 1), 1)
        batches.extend(same[a : a + size] for a in range(0, len(same), size))
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
    """The loaded model of one backend: ``encode(texts, layers, config, on_batch)``, ``close()``,
    and ``self_check``: the record of its check against the model's own forward (or None)."""

    def __init__(self, encode, close=lambda: None, self_check: dict | None = None) -> None:
        self.encode, self.close, self.self_check = encode, close, self_check


def make_encoder(config: EncodeConfig, spec: ModelSpec, device: str, dtype: str, layers: list[int], check_texts: list[str]) -> Encoder:
    """Load the model on the chosen backend and check it on ``check_texts`` against the model's
    own forward (stage1_encode/self_check.py); a damaged model folder, or a deviating one, is
    refused here, before anything is written."""
    import torch

    from stage1_encode.models import load_model
    from stage1_encode.self_check import check_stepper
    from stage1_encode.stepping import LayerStepper

    if device == "cpu" and dtype == "float32":
        warn("no GPU: encoding on CPU in float32 (slow; fine for small graphs)")
    if config.backend == "vllm":
        from stage1_encode import vllm_backend

        engine, record = vllm_backend.checked_encoder(spec, config, layers, check_texts, device, dtype)
        encoder = Encoder(functools.partial(vllm_backend.encode_block, engine), engine.close, record)
    else:
        stepper = LayerStepper(load_model(spec, device, getattr(torch, dtype)))
        record = check_stepper(stepper, check_texts, layers, config.pooling, config.max_length)
        encoder = Encoder(functools.partial(encode_block, stepper), self_check=record)
    if record is not None:
        log(f"self-check: {record['texts']} texts match the model's own forward to {record['max_rel_deviation']:.1e} relative "
            f"(tolerance {record['tolerance']:.0e}; {record['seconds']:.1f}s)")
    return encoder


def check_texts(graph: TextGraph, source: np.ndarray, config: EncodeConfig) -> list[str]:
    """The first texts this shard sends to the LLM (``source`` (N,) < 0), for the self-check."""
    from stage1_encode.self_check import first_texts

    n_blocks = cache_format.num_blocks(graph.num_nodes, config.block_size)
    rows: list[int] = []
    for b in cache_format.shard_blocks(n_blocks, config.num_shards, config.shard_id):
        lo, hi = cache_format.block_range(b, graph.num_nodes, config.block_size)
        rows.extend((lo + np.flatnonzero(source[lo:hi] < 0)).tolist()[: 32 - len(rows)])
        if len(rows) >= 32:
            break
    return first_texts(graph.texts, rows)


def run(config: EncodeConfig) -> Path:
    """Encode (this shard of) a graph into a cache; returns the cache path. Quick no-op when done.

    With ``config.reuse``, rows of unchanged nodes are copied from that older cache and only
    new or edited texts run through the LLM (stage1_encode/reuse.py); the cache is the same.
    """
    config.validate()
    graph = load_graph(config.graph)
    spec = resolve_model(config.model, config.trust_remote_code)
    check_supported(spec)  # a family the stepping is not checked for is refused by name, listing those it is
    if config.backend == "vllm":
        from stage1_encode.vllm_backend import check_architecture

        check_architecture(spec)  # refuse (naming --backend hf) before anything is written
    num_states, hidden = model_shape(spec)
    layers = parse_layers(config.layers, num_states)
    device, dtype = pick_device(config)
    check_max_length(spec, config.max_length)
    check_weights(spec)
    out = Path(config.out) if config.out is not None else default_out(graph.name, config.model)
    manifest = build_manifest(config, graph, spec, layers, hidden, dtype)
    hashes = cache_format.text_hashes(graph.texts)  # (N, 16)
    plan = None
    if config.reuse is not None:
        from stage1_encode.reuse import plan_reuse

        plan = plan_reuse(config.reuse, out, manifest, graph.node_ids, hashes)  # refusals before anything is written
        log(plan.describe())
    # every check before the first write (the weights hash memo, the cache folder); --reuse is an input too
    inputs = [graph_folder(graph), spec.path] + ([Path(config.reuse)] if config.reuse is not None else [])
    exists = cache_format.claim(out, config.overwrite, inputs=inputs)
    resolved = flag_values(replace(config, out=out, layers=",".join(map(str, layers)), dtype=dtype, device=device))
    source = plan.source if plan is not None else np.full(graph.num_nodes, -1, dtype=np.int64)  # (N,) row of --reuse, -1 = LLM
    first = check_texts(graph, source, config)
    # a new cache is created only once the model has loaded and passed its self-check (a damaged
    # or deviating model leaves nothing behind); the manifest records the check
    encoder = None if exists else make_encoder(config, spec, device, dtype, layers, first)
    if encoder is not None and encoder.self_check is not None:
        manifest["self_check"] = encoder.self_check
    try:
        return _fill(config, out, graph, manifest, resolved, hashes, plan, source, first, layers, hidden, spec, device, dtype, encoder)
    except Exception as err:
        from pipeline.core.errors import disk_full

        if disk_full(err) is not None and not exists and config.num_shards == 1 and out.is_dir():
            # a full disk in the cache this run created: remove it (a resumed cache keeps its whole blocks)
            cache_format.remove_cache(out)
        raise


def _fill(config, out, graph, manifest, resolved, hashes, plan, source, first, layers, hidden, spec, device, dtype, encoder) -> Path:
    """Create or open the cache and encode (or copy) the blocks this shard still lacks; ``source`` (N,): each
    row's row in the --reuse cache, -1 for the LLM; ``first``: the self-check's texts."""
    writer = cache_format.CacheWriter.create_or_open(out, manifest, graph.node_ids, resolved, config.overwrite, hashes=hashes)

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

    ranges = [cache_format.block_range(b, graph.num_nodes, config.block_size) for b in todo]
    n_todo = sum(e - s for s, e in ranges)
    todo_rows = np.concatenate([np.arange(s, e) for s, e in ranges])
    n_llm = int((source[todo_rows] < 0).sum())
    if encoder is None:  # resuming: checked before its first block is written
        encoder = make_encoder(config, spec, device, dtype, layers, first)
        writer.record_self_check(encoder.self_check)
    encode = encoder.encode
    from pipeline.core.devices import peak_memory_text, reset_peak_memory

    reset_peak_memory(device)
    what = f"{n_llm} of {graph.num_nodes} nodes" if plan is None else f"{n_llm} texts ({_kinds(plan, todo_rows)}) of {graph.num_nodes} nodes"
    log(f"encoding {what}{shard} with {config.model} on {config.backend} ({len(layers)} rungs {layers}, {device} {dtype}) -> {out}")
    start, real, padded, tokens_done, reused = time.perf_counter(), 0, 0, 0, 0
    with progress(n_todo, "encode", unit="texts") as bar:

        def on_batch(n: int, n_tokens: int) -> None:
            nonlocal tokens_done
            tokens_done += n_tokens
            bar.advance(n, tok_s=tokens_done / max(time.perf_counter() - start, 1e-9))

        for window in _windows(list(zip(todo, ranges)), source, config.block_size):
            # the LLM texts of the whole window at once: an update's few texts a block make full batches
            rows = np.concatenate([lo + np.flatnonzero(source[lo:hi] < 0) for _, (lo, hi) in window])  # (m,) graph rows
            t_window = time.perf_counter()
            if len(rows):
                texts = graph.texts.take(rows) if hasattr(graph.texts, "take") else [graph.texts[i] for i in rows.tolist()]
                encoded, r, p = encode(texts, layers, config, on_batch)  # (m, S, H)
                real, padded = real + r, padded + p
            per_row = (time.perf_counter() - t_window) / max(len(rows), 1)  # a block's seconds: its share of the window's encode
            for b, (lo, hi) in window:
                src = source[lo:hi]
                fresh, copied = np.flatnonzero(src < 0), np.flatnonzero(src >= 0)
                values = np.empty((hi - lo, len(layers), hidden), dtype=np.float32)  # (n, S, H)
                if len(fresh):
                    values[fresh] = encoded[np.searchsorted(rows, lo + fresh)]
                if len(copied):
                    values[copied] = plan.copy_rows(src[copied])  # storage dtype -> float32 and back: exact
                    reused += len(copied)
                    bar.advance(len(copied), reused=reused)
                writer.write_block(b, values, graph.node_ids, seconds=per_row * len(fresh), peak_bytes=process_peak_bytes(device))
    encoder.close()  # vLLM: stops its engine process and frees its shared memory
    complete = writer.finish()
    elapsed = time.perf_counter() - start
    done = f"encoded {n_todo} nodes{shard} in {elapsed:.1f}s"
    if plan is not None:
        done += f": {n_todo - n_llm} rows reused from {config.reuse}, {n_llm} texts through the LLM ({_kinds(plan, todo_rows)}), {plan.dropped} dropped"
    done += (
        f"; LLM {n_llm / max(elapsed, 1e-9):.1f} texts/s, {real / max(elapsed, 1e-9):.0f} tokens/s;"
        f" {real} LLM tokens, padding {1 - real / max(padded, 1):.1%}{peak_memory_text(device)}; cache {cache_format.disk_bytes(out) / 1e6:.1f} MB on disk; "
    )
    log(done + ("complete" if complete else f"{writer.blocks_left} block(s) left for other shards"))
    return out


MAX_WINDOW_BLOCKS = 64  # blocks whose LLM texts are encoded together (what a kill can lose, at most)


def _windows(blocks: list, source: np.ndarray, block_size: int) -> list[list]:
    """Consecutive ``(b, (lo, hi))`` of ``blocks`` grouped so that each group holds about a block's
    worth of texts for the LLM (``source`` (N,) < 0), at most ``MAX_WINDOW_BLOCKS`` blocks.
    A full encode gets one block a group, as before; an update gathers its few new texts a block."""
    windows, current, fresh = [], [], 0
    for b, (lo, hi) in blocks:
        current.append((b, (lo, hi)))
        fresh += int((source[lo:hi] < 0).sum())
        if fresh >= block_size or len(current) == MAX_WINDOW_BLOCKS:
            windows.append(current)
            current, fresh = [], 0
    if current:
        windows.append(current)
    return windows


def _kinds(plan, rows: np.ndarray) -> str:
    """``"3 new, 2 edited"``: the LLM's share of ``rows`` by kind (stage1_encode/reuse.py)."""
    counts = plan.counts(rows)
    return ", ".join(f"{counts[k]} {k}" for k in ("new", "edited", "unfinished") if counts[k] or k != "unfinished")
