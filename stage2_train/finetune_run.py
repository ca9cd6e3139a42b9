"""``pipeline train --arch lora|ia3|prefix|finetune``: the LLM itself trained, one model per seed.

The cache names the graph, model, max length and pooling (its manifest); its states are not
read, since the LLM changes, so an incomplete cache is fine. Splits, seeds, early stopping,
progress, summary and checkpoint are those of the other archs (``stage2_train.run``).
"""

from __future__ import annotations

import time

import numpy as np

from pipeline.core.options import flag_values
from pipeline.core.progress import log, progress
from stage2_train.config import TrainConfig


def finetune_spec(config: TrainConfig, manifest: dict, num_classes: int) -> dict:
    """``config["model"]`` of a fine-tuning run: what :func:`build_classifier` rebuilds."""
    return {
        "arch": config.arch,
        "llm": manifest["model"],
        "weights_sha256": manifest.get("weights_sha256"),
        "out_channels": num_classes,
        "pooling": manifest["pooling"],
        "max_length": manifest["max_length"],
        "dropout": config.dropout,
        "num_rungs": 1,
    }


def run_finetune(config: TrainConfig) -> dict:
    """Train ``config.arch`` on the cache's graph and write ``config.out``; returns the summary."""
    from pipeline.core.graph import load_graph
    from stage1_encode.cache.reader import open_cache
    from stage2_train import cache_binding
    from stage2_train.cache_binding import identity_of
    from stage2_train.checkpoint import CheckpointWriter, load_warm_start, split_cost, warm_start_weights
    from stage2_train.data import log_default_split, training_splits
    from stage2_train.finetune_loop import TextBatches, epoch_batches, train_finetune_seed
    from stage2_train.finetune_model import build_classifier
    from stage2_train.ledger import PeakMemory, count_backward_params, count_trainable, ledger
    from stage2_train.loop import seed_everything
    from stage2_train.resume import kill_point
    from stage2_train.run import open_state, summarize, summary_line, format_test_acc

    state = open_state(config, None)  # refuses a state of other flags, or a damaged one, before any work
    memory = PeakMemory(config.device)
    state.watch(memory)
    reader = open_cache(config.cache)  # the manifest only: the LLM changes, so the states are not used
    manifest = dict(reader.manifest)
    graph = load_graph(manifest["graph_source"])
    reader.check_graph(graph)
    splits = training_splits(graph, config.split, config.seeds)
    spec = finetune_spec(config, manifest, graph.num_classes)
    layer = int(manifest["layers"][-1]) if manifest.get("layers") else None
    labels = np.asarray(graph.labels)
    resolved = {
        **config.to_dict(),
        "cache": str(config.cache.resolve()),
        "graph_source": manifest["graph_source"],
        "graph_fingerprint": graph.fingerprint,
        cache_binding.KEY: identity_of(config.cache),  # its settings name the LLM; its states are not read
        "num_nodes": graph.num_nodes,
        "layers": [layer],
        "label_names": list(graph.label_names),
        "model": spec,
        "world_size": 1,
        "features": {"mode": "llm-in-the-loop", "max_length": spec["max_length"], "pooling": spec["pooling"]},
    }
    def init_weights(seed: int) -> dict:
        return warm_start_weights(config.init, spec, [layer], list(graph.label_names), manifest, seed)

    if config.init is not None:  # refuse a run that cannot warm-start this one before loading the LLM
        init_weights(config.seeds[0])
    results, sizes, costs, counted = [], {}, [], {"backward": state.backward_params}
    log_default_split(graph, config.split)
    with CheckpointWriter(config.out, config.overwrite) as writer:
        writer.write_config(resolved, manifest, flag_values(config))
        on_epoch = state.recorder(writer)
        for seed in config.seeds:
            split = splits[seed]
            sizes[seed] = {k: int(len(v)) for k, v in split.items()}
            if state.restore(seed, writer, results, costs):  # finished before the run was stopped: never redone
                continue
            seed_everything(seed)
            model = build_classifier(spec, config.device)
            if config.init is not None:  # warm start: the earlier run's adapter (or LLM weights) and head
                load_warm_start(model, init_weights(seed), config.init)
            texts = TextBatches(model.stepper, graph.texts, spec["max_length"])
            trainable = count_trainable(model)

            def on_first_loss(loss, model=model) -> None:
                counted["backward"] = count_backward_params(model, loss)

            steps = config.epochs * epoch_batches(len(split["train"]), config)
            t0 = state.start_seed(seed)
            with progress(steps, f"{config.arch} seed {seed}", unit="batches") as tracker:
                r = train_finetune_seed(model, texts, split, labels, config, seed, on_epoch, tracker, on_first_loss, state)
            costs.append({"train_s": time.perf_counter() - t0, "epoch_s": r.epoch_s, "epochs_run": r.epochs_run,
                          "trainable_params": trainable})
            writer.save_weights(seed, r.state_dict)
            state.finish_seed(r, costs[-1], counted["backward"])
            kill_point(f"after seed {seed}")
            results.append(r)
            log(f"seed {seed}: best epoch {r.best_epoch}/{r.epochs_run}, val {r.val_acc[-1]:.4f}, test {format_test_acc(r.test_acc[-1], '.4f')}, "
                f"{r.epoch_s:.1f}s/epoch")
            del model, texts
        summary = summarize(results, [layer], config, sizes)
        for entry, cost in zip(summary["per_seed"], costs):
            entry["train_s"] = cost["train_s"]
        trainable = costs[0]["trainable_params"]  # the same for every seed: one spec
        summary["cost"] = ledger(costs, trainable, counted["backward"] if counted["backward"] is not None else trainable, memory, manifest,
                                 reads_cache=False, max_batches=config.max_batches, earlier_peaks=state.earlier_peaks())
        writer.write_summary(*split_cost(summary))
        kill_point("commit")
        writer.commit()
    kill_point("committed")
    state.remove()
    log(summary_line(config, summary))
    return summary
