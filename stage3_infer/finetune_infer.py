"""``pipeline infer`` on a fine-tuning run (``--arch lora|ia3|prefix|finetune``): full depth.

The tuned LLM classifies each target from its own text, so there are no rungs to exit at:
every prediction is the last state's (``exit_rung`` 0, ``exit_layer`` the LLM's last state),
in the same predictions format as the ladder's. New nodes (``--nodes``) need only their text.

Shapes: M targets, C classes.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pipeline.core.options import flag_values
from pipeline.core.progress import log, progress
from stage3_infer.config import InferConfig
from stage3_infer.predictions import Predictions, summarize, write_outputs
from stage3_infer.run import no_targets_reason, require_trained_graph


def run_finetune_infer(config: InferConfig) -> dict:
    """Predict the chosen targets with a fine-tuning run's model and write ``config.out``."""
    from pipeline.core.graph import load_graph
    from stage2_train.checkpoint import load_checkpoint
    from stage2_train.finetune_loop import TextBatches
    from stage3_infer.targets import InferGraph, add_new_nodes, select_targets

    ckpt = load_checkpoint(config.checkpoint, seed=config.seed, device=config.device)
    model = ckpt.model
    graph = load_graph(ckpt.graph_source)
    require_trained_graph(ckpt, graph, config.checkpoint)
    g = InferGraph(graph, graph.num_nodes)
    if config.nodes is not None:
        g = add_new_nodes(graph, config.nodes, config.edges, ckpt.label_names)
    targets = select_targets(g, config.split, config.node_ids, ckpt.config.get("split"), ckpt.seed, config.new_only)
    if config.max_targets is not None:
        targets = targets[: config.max_targets]
    if len(targets) == 0:  # a quiet night: an empty, valid predictions file
        log(f"infer: no target{no_targets_reason(config)}; writing an empty predictions file")
    last = int(ckpt.layers[-1])
    log(f"infer: {len(targets)} target(s) with the {model.arch} run at full depth (LLM state {last})")
    texts = TextBatches(model.stepper, [g.graph.texts[i] for i in targets.tolist()], int(ckpt.config["model"]["max_length"]))
    # texts per forward: one with --batch-invariant (a node's answer independent of its batch-mates), else --batch-size or 32
    batch = 1 if config.batch_invariant else (config.batch_size or 32)
    start = time.perf_counter()
    probs = torch.empty(len(targets), len(ckpt.label_names))
    model.eval()
    with progress(len(targets), f"infer {model.arch}", unit="nodes") as bar, torch.no_grad():
        for a in range(0, len(targets), batch):
            rows = np.arange(a, min(a + batch, len(targets)))
            probs[rows] = model(texts(rows))[0].float().softmax(-1).cpu()  # (B, C)
            bar.advance(len(rows))
    wall = time.perf_counter() - start
    conf, pred = probs.max(-1)
    preds = Predictions(
        node_ids=g.graph.node_ids[targets], pred=pred.numpy(), confidence=conf.numpy(),
        exit_rung=np.zeros(len(targets), dtype=np.int64), exit_layer=np.full(len(targets), last, dtype=np.int64),
        labels=np.asarray(g.graph.labels)[targets], label_names=ckpt.label_names, graph_fingerprint=g.graph.fingerprint,
    )
    evals = len(targets) * last
    summary = summarize(
        preds, policy="none", layer_evals=evals, full_depth_evals=evals, wall_time_s=wall,
        extra={
            "checkpoint": str(Path(config.checkpoint).resolve()), "seed": ckpt.seed, "arch": model.arch,
            "model": ckpt.config["model"]["llm"], "rung_layers": [last],
            "new_nodes": int(g.graph.num_nodes - g.num_known), "cache_neighbours": False,
            "graph_source": g.graph.source, "graph_fingerprint": g.graph.fingerprint,
            **({"new_only_since": str(Path(config.new_only).resolve())} if config.new_only else {}),
        },
    )
    write_outputs(config.out, preds, summary, config=flag_values(replace(config, exit="none")), overwrite=config.overwrite)
    acc = summary["accuracy"]
    log(f"infer: {len(targets)} node(s) in {wall:.1f}s" + (f", accuracy {100 * acc:.2f}%" if acc is not None else "") + f" -> {config.out}")
    return summary
