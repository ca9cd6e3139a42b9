"""``pipeline infer``: setup -> loop over target batches -> save.

Setup loads the checkpoint, its graph (grown by ``--nodes/--edges``), the LLM named by the
checkpoint's cache manifest (refusing another model or layer set), and the cache for known
neighbours. The loop samples each target batch's subgraphs exactly as training evaluated
them and lets the batch climb the ladder with real LLM layer stepping (``early_exit.climb``).

Shapes: M targets, S rungs, H LLM width, C classes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from pipeline.core.errors import InputError
from pipeline.core.options import flag_values
from pipeline.core.progress import log, progress, warn
from stage3_infer.config import InferConfig
from stage2_train.exit_policies import ExitPolicy, ExitTracker, parse_exit, resolve_exit
from stage3_infer.predictions import Predictions, summarize, write_outputs
from stage3_infer.targets import InferGraph


@dataclass
class Session:
    """Everything loaded once and reused across policies (the bench runs several)."""

    checkpoint: object  # stage2_train.checkpoint.Checkpoint
    g: InferGraph
    stepper: object  # stage1_encode.stepping.LayerStepper
    sampler: object  # stage2_train.sampling.Sampler over the (grown) graph
    cached: object | None  # compat.CacheRows: rungs (n, S, H) of known nodes, or None
    layers: list[int]  # LLM state of each rung (S,)
    pooling: str
    max_length: int
    batch_tokens: int  # token budget of an LLM micro-batch (texts x padded length)
    batch_size: int | None  # at most this many texts per LLM micro-batch
    batch_invariant: bool  # each target climbs alone, each text runs alone (InferConfig.batch_invariant)
    storage_dtype: str  # how the cache stores states: fresh states are rounded the same way
    device: str  # where the LLM runs (resolved --device)
    compute_dtype: str  # the LLM's dtype: the cache's unless a mismatch was allowed
    sample_batch: int  # targets per sampled subgraph batch (training's evaluation batch)
    exit_spec: str  # the policy infer runs: --exit, else the one the run stored for its seed
    exit_source: str  # why that policy (resolve_exit)


@dataclass
class Result:
    tracker: ExitTracker
    layer_evals: int
    full_depth_evals: int
    wall_time_s: float


def require_trained_graph(ckpt, graph, checkpoint: Path) -> None:
    """Refuse a graph that changed since training: its split, and so which nodes are test, may differ."""
    if ckpt.config["graph_fingerprint"] != graph.fingerprint:
        raise InputError(f"--checkpoint {checkpoint}: graph '{ckpt.graph_source}' changed since training (fingerprint differs); retrain on the current graph")


def open_session(config: InferConfig) -> Session:
    """Load and cross-check checkpoint, graph, model and cache; refusals raise InputError.

    The policy infer runs (``--exit``, else the run's stored one) is resolved and checked
    against the checkpoint's rungs before the LLM is loaded.
    """
    from pipeline.core.graph import load_graph
    from stage2_train.checkpoint import load_checkpoint
    from stage2_train.sampling import Sampler
    from stage3_infer.compat import check_cache, check_model, manifest_model
    from stage3_infer.targets import add_new_nodes

    ckpt = load_checkpoint(config.checkpoint, seed=config.seed, device="cpu")  # the ladder is tiny: CPU; the LLM on --device
    if ckpt.config["model"]["arch"] != "ladder":
        raise InputError(f"--checkpoint {config.checkpoint}: a '{ckpt.config['model']['arch']}' baseline has no exit rungs; infer needs a G-Ladder run (`pipeline train CACHE --arch ladder`)")
    exit_spec, exit_source = resolve_exit(config.exit, ckpt)
    parse_exit(exit_spec, num_rungs=len(ckpt.layers))
    graph = load_graph(ckpt.graph_source)
    require_trained_graph(ckpt, graph, config.checkpoint)
    g = InferGraph(graph, graph.num_nodes)
    if config.nodes is not None:
        g = add_new_nodes(graph, config.nodes, config.edges, ckpt.label_names)

    from pipeline.core.devices import resolve_device
    from stage1_encode.models import check_weights, load_model, resolve_model
    from stage1_encode.precision import cache_compute_dtype
    from stage1_encode.stepping import LayerStepper

    manifest = ckpt.manifest
    dtype = cache_compute_dtype(manifest, config.dtype, config.allow_dtype_mismatch, str(ckpt.cache_path))
    device = resolve_device(config.device)
    model_name = config.model or manifest_model(manifest)
    spec = resolve_model(model_name)
    check_model(spec, manifest, ckpt.layers, config.checkpoint)  # cheap checks before loading
    check_weights(spec)
    stepper = LayerStepper(load_model(spec, device=device, dtype=getattr(torch, dtype)))
    check_model(spec, manifest, ckpt.layers, config.checkpoint, stepper=stepper)
    from stage1_encode.self_check import check_stepper, first_texts

    check_stepper(stepper, first_texts(g.graph.texts), list(ckpt.layers), manifest["pooling"], manifest["max_length"])

    cached = None
    if config.cache_neighbours:
        cached = check_cache(ckpt, graph)
        if cached is None:
            warn(f"cache {ckpt.cache_path} is not available: known neighbours run through the LLM too (slower)")
    sampler = Sampler(g.graph.edge_index, g.graph.num_nodes, **ckpt.sampler)  # the training sampler, grown graph
    return Session(
        checkpoint=ckpt, g=g, stepper=stepper, sampler=sampler, cached=cached, layers=list(ckpt.layers),
        pooling=manifest["pooling"], max_length=manifest["max_length"],
        batch_tokens=config.batch_tokens, batch_size=config.batch_size, batch_invariant=config.batch_invariant, storage_dtype=manifest["storage_dtype"], device=device, compute_dtype=dtype,
        sample_batch=ckpt.config["eval_batch_size"], exit_spec=exit_spec, exit_source=exit_source,
    )


def predict(session: Session, targets: np.ndarray, policy: ExitPolicy, show_progress: bool = True,
            collect: list | None = None) -> Result:
    """Run every target to its exit; targets (M,) are dense indices of ``session.g.graph``.

    ``collect``: with policy ``none``, receives each batch's logits (S, B, C).
    """
    from stage1_encode.cache.quantize import round_like_storage
    from stage3_infer.early_exit import BatchSources, climb
    from stage3_infer.llm_runner import TextRunner

    s = session
    ladder = s.checkpoint.model
    # training read states as the cache stores them (fp16, or int8 rows): round fresh ones the same way
    round_like_cache = lambda h: round_like_storage(h, s.storage_dtype)  # noqa: E731
    texts = s.g.graph.texts
    tracker = ExitTracker(policy, len(targets), len(s.layers))
    evals = 0
    exited_early = 0  # targets done so far that exited before the last rung
    full = 0
    start = time.perf_counter()
    # batch-invariant: one target a chunk, one text an LLM micro-batch, so no float reduction ever
    # mixes two targets (matrix kernels pick their paths by shape, and rows can round differently)
    step = 1 if s.batch_invariant else s.sample_batch
    chunks = [np.arange(a, min(a + step, len(targets))) for a in range(0, len(targets), step)]
    with progress(len(targets), f"infer {policy}", unit="nodes") if show_progress else _null() as bar:
        for rows in chunks:
            sub = s.sampler.sample(targets[rows])  # keyed: the subgraphs training evaluated, in any batch
            # fresh (LLM) states for each target's own node, for new nodes, and for every node
            # when no cache is used; known neighbours read the cache
            fresh = torch.zeros(len(sub.nodes), dtype=torch.bool)
            fresh[sub.targets] = True
            fresh |= torch.as_tensor(s.g.is_new(sub.nodes.numpy()))
            if s.cached is None:
                fresh[:] = True
            uniq, slot_of = torch.unique(sub.nodes[fresh], return_inverse=True)  # one text slot per node
            fresh_slot = torch.full((len(sub.nodes),), -1, dtype=torch.long)
            fresh_slot[fresh] = slot_of
            cached = None
            if s.cached is not None:
                known = sub.nodes.clamp(max=s.g.num_known - 1)  # new nodes' rows are never read
                cached = s.cached(known)  # (n, S, H)
            runner = TextRunner(s.stepper, [texts[u] for u in uniq.tolist()], s.batch_tokens, s.max_length, s.pooling,
                                1 if s.batch_invariant else s.batch_size)
            logits = climb(ladder, sub, BatchSources(fresh_slot, cached), runner, s.layers, tracker,
                  torch.as_tensor(rows), round_states=round_like_cache)
            if collect is not None:
                collect.append(torch.stack(logits))  # (S, B, C)
            evals += runner.layer_evals
            full += len(uniq) * s.layers[-1]
            if bar is not None:
                exited_early += int((tracker.exit_rung[rows] < len(s.layers) - 1).sum())
                bar.advance(len(rows), exited_early=f"{exited_early / (rows[-1] + 1):.2f}")
    return Result(tracker, evals, full, time.perf_counter() - start)


def no_targets_reason(config: InferConfig) -> str:
    """Why a run selected no node (only ``--new-only`` can select none without an error)."""
    return f" (no node is new since {config.new_only})" if config.new_only is not None else ""


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def run(config: InferConfig) -> dict:
    """Predict the chosen targets with early exit and write ``config.out``; returns the summary.
    A fine-tuning run predicts at full depth (:mod:`stage3_infer.finetune_infer`)."""
    from stage2_train import cache_binding
    from stage2_train.checkpoint import run_arch
    from stage2_train.config import FINETUNE_ARCHS
    from pipeline.core.devices import peak_memory, peak_memory_text, reset_peak_memory
    from stage3_infer.targets import select_targets

    # --- setup
    config.validate()
    arch = run_arch(config.checkpoint)
    from stage2_train.arch_options import infer_no_effect_problems

    problems = infer_no_effect_problems(config, arch) if arch is not None else []
    if problems:
        raise InputError(problems)
    if arch in FINETUNE_ARCHS:
        if config.exit not in (None, "none"):
            raise InputError(
                f"--exit {config.exit}: {config.checkpoint} is a fine-tuning run (--arch {arch}), which has no exit rungs "
                "and predicts at full depth only; pass --exit none or leave --exit out"
            )
        from stage3_infer.finetune_infer import run_finetune_infer

        return run_finetune_infer(config)
    if config.shard is not None:  # every part of a job has the same flags: refused before the LLM loads
        from pipeline.core.shards import parse_shard
        from stage3_infer.parts import start_part

        start_part(config.out, flag_values(config), parse_shard(config.shard)[1])
    session = open_session(config)
    ckpt = session.checkpoint
    exit_spec, why = session.exit_spec, session.exit_source
    policy = parse_exit(exit_spec, num_rungs=len(session.layers))
    targets = select_targets(session.g, config.split, config.node_ids, ckpt.config.get("split"), ckpt.seed, config.new_only)
    if config.max_targets is not None:
        targets = targets[: config.max_targets]
    out = config.out
    if config.shard is not None:  # part I of N: a contiguous slice of the targets, into OUT.parts/
        from pipeline.core.shards import parse_shard
        from stage3_infer.parts import part_dir, part_slice
        from stage3_infer.predictions import read_summary

        i, n = parse_shard(config.shard)
        out, targets = part_dir(config.out, i, n), targets[part_slice(len(targets), i, n)]
        if (out / "summary.json").is_file():
            log(f"infer: part {i}/{n} is done already ({out}); nothing to do")
            return read_summary(out)
    if len(targets) == 0:  # a quiet night: an empty, valid predictions file
        log(f"infer: no target{no_targets_reason(config)}; writing an empty predictions file")
    log(f"infer: {len(targets)} target(s), rungs at LLM states {session.layers}, exit policy {policy}: {why}")

    # --- loop
    reset_peak_memory(session.device)  # the peak from here on: weights, activations of the loop
    result = predict(session, targets, policy)

    # --- save
    if session.cached is not None and isinstance(ckpt.config.get(cache_binding.KEY), dict):  # no mixed states
        cache_binding.check_unchanged(ckpt.cache_path, ckpt.config[cache_binding.KEY], "infer")
    graph, t = session.g.graph, result.tracker
    preds = Predictions(
        node_ids=graph.node_ids[targets],
        pred=t.pred.numpy(),
        confidence=t.confidence.numpy(),
        exit_rung=t.exit_rung.numpy(),
        exit_layer=np.asarray(session.layers)[t.exit_rung.numpy()],
        labels=np.asarray(graph.labels)[targets],
        label_names=ckpt.label_names,
        graph_fingerprint=graph.fingerprint,
    )
    summary = summarize(
        preds, policy=str(policy), layer_evals=result.layer_evals, full_depth_evals=result.full_depth_evals,
        wall_time_s=result.wall_time_s,
        extra={
            "checkpoint": str(Path(config.checkpoint).resolve()),
            "seed": ckpt.seed,
            "model": session.stepper.loaded.spec.name,
            "rung_layers": session.layers,
            "new_nodes": int(graph.num_nodes - session.g.num_known),
            "cache_neighbours": session.cached is not None,
            "policy_source": why,
            "graph_source": graph.source,
            "graph_fingerprint": graph.fingerprint,
            **({"new_only_since": str(Path(config.new_only).resolve())} if config.new_only else {}),
            "device": session.device,
            "compute_dtype": session.compute_dtype,
            "cache_compute_dtype": ckpt.manifest.get("compute_dtype"),
            "dtype_mismatch_allowed": session.compute_dtype != ckpt.manifest.get("compute_dtype", session.compute_dtype),
            "gpu_peak_memory_bytes": peak_memory(session.device),
        },
    )
    resolved = replace(config, device=session.device, dtype=session.compute_dtype, exit=exit_spec)  # what ran, replayable
    write_outputs(out, preds, summary, config=flag_values(resolved), overwrite=config.overwrite and config.shard is None)
    acc, mean_exit = summary["accuracy"], summary["mean_exit_layer"]
    log(
        f"infer: {len(targets)} node(s) in {result.wall_time_s:.1f}s, "
        + (f"accuracy {100 * acc:.2f}%, " if acc is not None else "")
        + (f"mean exit layer {mean_exit:.1f}/{session.layers[-1]}, " if mean_exit is not None else "")
        + f"LLM layers run {100 * (summary['layer_fraction'] or 0):.1f}% of full depth{peak_memory_text(session.device)} -> {out}"
    )
    return summary
