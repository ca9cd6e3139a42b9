"""``run(TrainConfig)``: setup -> one training loop per seed -> checkpoint and summary."""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from pipeline.core.errors import InputError, PipelineError
from pipeline.core.options import flag_values
from pipeline.core.progress import log, warn
from stage2_train.config import CacheTrainConfig, LadderConfig, TrainConfig


def model_spec(config: CacheTrainConfig, in_channels: int, num_classes: int, num_rungs: int) -> dict:
    """What :func:`stage2_train.checkpoint.build_model` needs to rebuild the network."""
    spec = {
        "arch": config.arch,
        "in_channels": in_channels,
        "hidden_channels": config.hidden_channels,
        "out_channels": num_classes,
        "num_rungs": num_rungs,
        "num_layers": config.num_layers,
        "dropout": config.dropout,
        "standardize": config.standardize,
    }
    if isinstance(config, LadderConfig):
        spec.update(gnn=config.gnn, temperature=config.temperature, readout=config.readout, rung_grad=config.rung_grad,
                    rung_activation=config.rung_activation, rung_norm=config.rung_norm)
    return spec


def summarize(results: list, layers: list[int], config: TrainConfig, split_sizes: dict) -> dict:
    """Mean ± std over seeds (population std, numpy's default) of the answering head (the last,
    or each seed's best on validation with ``--depth val``) and of every head."""
    test = np.array([r.test_acc for r in results])  # (seeds, S)
    val = np.array([r.val_acc for r in results])
    answer_test = np.array([r.test_acc[r.answer] for r in results])  # (seeds,)
    answer_val = np.array([r.val_acc[r.answer] for r in results])
    best = max(results, key=lambda r: (r.val_acc[r.answer], -r.seed))
    policies = [r.exit_policy for r in results if r.exit_policy and "test_acc" in r.exit_policy]
    return {
        "arch": config.arch,
        "layers": layers,
        "seeds": [r.seed for r in results],
        "test_acc_mean": float(answer_test.mean()),
        "test_acc_std": float(answer_test.std()),
        "val_acc_mean": float(answer_val.mean()),
        "val_acc_std": float(answer_val.std()),
        # what `pipeline infer` answers by default: each seed's exit policy replayed on its test nodes (ladder only)
        "exit_test_acc_mean": float(np.mean([p["test_acc"] for p in policies])) if len(policies) == len(results) else None,
        "exit_test_acc_std": float(np.std([p["test_acc"] for p in policies])) if len(policies) == len(results) else None,
        "heads": [
            {
                "layer": layer,
                "val_acc_mean": float(val[:, i].mean()),
                "val_acc_std": float(val[:, i].std()),
                "test_acc_mean": float(test[:, i].mean()),
                "test_acc_std": float(test[:, i].std()),
            }
            for i, layer in enumerate(layers)
        ],
        "gates_mean": np.mean([r.gates for r in results], axis=0).tolist() if results[0].gates else [],
        "epoch_s_mean": float(np.mean([r.epoch_s for r in results])),
        "default_seed": best.seed,  # chosen on validation accuracy of the answering head
        "exit_policy": best.exit_policy,  # the default seed's, chosen on its validation nodes (ladder only)
        "per_seed": [
            {
                "seed": r.seed,
                "best_epoch": r.best_epoch,
                "epochs_run": r.epochs_run,
                "depth": r.answer + 1,  # rungs kept: the ladder answers with head depth - 1, LLM state layers[depth - 1]
                "val_acc": r.val_acc[r.answer],
                "test_acc": r.test_acc[r.answer],
                "train_acc": r.train_acc[r.answer],
                "val_acc_heads": r.val_acc,
                "test_acc_heads": r.test_acc,
                "train_acc_heads": r.train_acc,
                "gates": r.gates,
                "epoch_s": r.epoch_s,
                "epoch_s_each": r.epoch_s_each,
                "split_sizes": split_sizes[r.seed],
                "exit_policy": r.exit_policy,
            }
            for r in results
        ],
        "no_cache": not config.reads_cache,
    }


def measure_backward(model, features, sampler, targets: np.ndarray, labels: np.ndarray, config: TrainConfig) -> int:
    """Parameters the backward pass of one training batch touches (the ledger's
    ``backward_params``): a forward on ``targets`` with the random state left as it was."""
    import torch

    from stage2_train.ledger import count_backward_params
    from stage2_train.loop import head_losses

    with torch.random.fork_rng(devices=[]):
        model.train()
        sub = sampler.sample(targets)
        pieces = getattr(features, "pieces", lambda s: [s])(sub)[:1]  # out of core: the first micro-batch
        p = pieces[0]
        logits = model(features(p.nodes).to(config.device), p.to(config.device))
        y = torch.as_tensor(labels[p.nodes[p.targets].numpy()], device=config.device)  # (B,)
        loss = head_losses(logits, y, torch.ones(model.num_rungs, device=config.device))
        n = count_backward_params(model, loss)
    model.eval()
    return n


def train_inputs(config: TrainConfig) -> list:
    """What training reads, which ``--out`` must not be, contain or lie inside: the cache and,
    when its manifest names a graph folder, that folder."""
    from stage1_encode.cache.manifest import read_manifest

    inputs = [config.cache] + ([config.init] if config.init is not None else [])  # --init is read too
    try:
        source = read_manifest(config.cache).get("graph_source")
    except InputError:
        return inputs  # a damaged cache is refused, naming the file, when it is opened
    from pipeline.core.builtin_datasets import builtin_path

    folder = builtin_path(source) if isinstance(source, str) else None
    folder = folder or (Path(source) if isinstance(source, str) and Path(source).is_dir() else None)
    return inputs + ([folder] if folder is not None else [])


def refuse_under_torchrun(config: TrainConfig) -> None:
    """What several ``torchrun`` ranks cannot do, refused before any work:
    - the fine-tuning archs, which train in one process (every rank would train the whole run
      and write ``--out``);
    - ``--memory-budget``: a rank keeps the cache rows its share's subgraphs reach in memory
      (stage2_train/distributed.py); its out-of-core reader is the one-process path only, so a
      budget there would not be honoured."""
    from stage2_train.config import FINETUNE_ARCHS
    from stage2_train.distributed import world_from_env

    world = world_from_env()[0]
    if config.arch in FINETUNE_ARCHS and world > 1:
        raise InputError(
            f"--arch {config.arch}: not supported under torchrun ({world} ranks): the fine-tuning archs train in one "
            "process (the LLM in the loop); run the same command without torchrun, with --device cuda on a GPU"
        )
    if getattr(config, "memory_budget", None) is not None and world > 1:  # fine-tuning has no budget
        raise InputError(
            f"--memory-budget: not supported under torchrun ({world} ranks): each rank holds in memory the cache rows "
            "its share of the targets reaches within --hops (rank 0 logs how many); drop --memory-budget and add ranks "
            "to shrink each rank's share, or train out of core in one process (without torchrun)"
        )


def run(config: TrainConfig) -> dict:
    """Train one model per seed from the cache (or the live LLM) and write ``config.out``.

    Under ``torchrun`` with several processes, each rank trains on its share and rank 0
    writes ``config.out`` (see :mod:`stage2_train.distributed`).
    """

    from stage2_train.config import FINETUNE_ARCHS
    from stage2_train.distributed import close_group, init_group, run_rank

    config.validate()  # resolves --device: cpu, cuda or, under torchrun, cuda:LOCAL_RANK (saved so)
    refuse_under_torchrun(config)
    from stage2_train.checkpoint import claim
    from stage2_train.distributed import world_from_env
    from stage2_train.resume import finished_leftover
    from stage2_train.run_lock import exclusive_run

    world, rank, _ = world_from_env()
    if (done := finished_leftover(config.out, flag_values(config), config.seeds, world, rank == 0)):
        log(f"{config.out}: already complete (it was stopped after writing it, before deleting its resumable state); nothing to do")
        return done

    claim(config.out, config.overwrite, inputs=train_inputs(config))  # before any work or write
    with exclusive_run(config.out, holder=rank == 0), torch_settings(config):  # one run at a time on --out
        if config.arch in FINETUNE_ARCHS:
            from stage2_train.finetune_run import run_finetune

            return run_finetune(config)
        group, failed = init_group(config.device, config.dist_timeout), True
        if group is not None and group.device != "cpu":
            config = replace(config, device=group.device)  # this rank's GPU, cuda:LOCAL_RANK
        try:
            summary = run_rank(group, lambda: _run(config, group))
            failed = False
            return summary
        finally:
            close_group(group, failed)


@contextlib.contextmanager
def torch_settings(config: TrainConfig):
    """``--num-threads`` and ``--deterministic`` for the run; the process's own settings are given back after."""
    import torch

    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's deterministic workspace (read at first use)
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])


def open_state(config: TrainConfig, group):
    """The run's :class:`stage2_train.resume.TrainState`, continuing ``RUN.resume`` when there is one
    (every rank reads it; under torchrun they check they read the same one)."""
    from stage2_train.distributed import Group, gather_stats
    from stage2_train.resume import TrainState

    t0 = time.perf_counter()
    state = TrainState(config.out, flag_values(config), group or Group(), config.state_every).load()
    if group is not None and len({int(w) for (w,) in gather_stats(group, [state.writes])}) > 1:
        raise PipelineError(f"{state.folder}: the ranks read different states (is it on a file system every rank sees?)")
    if state.writes:
        finished = sorted(int(s) for s in state.data["finished"])
        current = state.data["current"]
        log(f"resuming from {state.folder} (read in {time.perf_counter() - t0:.2f}s): seeds {finished} finished"
            + (f", seed {current['seed']} continues after epoch {current['epoch']}" if current else ""))
    return state


def _run(config: TrainConfig, group=None) -> dict:
    from stage2_train import cache_binding
    from stage2_train.cache_binding import identity_of
    from stage2_train.checkpoint import CheckpointWriter, build_model, split_cost
    from stage2_train.resume import kill_point
    from stage2_train.data import open_train_data, log_default_split, training_splits
    from stage2_train.distributed import NoWriter, ShardFeatures, load_share
    from stage2_train.features import open_run_features
    from stage2_train.loop import seed_everything, train_seed
    from stage2_train.sampling import Sampler
    from stage2_train.ledger import PeakMemory, count_trainable, ledger
    from stage2_train.exit_policies import describe_choice
    from pipeline.core.devices import peak_memory, peak_memory_text, reset_peak_memory
    from pipeline.core.progress import progress

    # --- setup
    state = open_state(config, group)  # refuses a state of other flags, or a damaged one, before any work
    memory = PeakMemory(config.device)
    state.watch(memory)
    bound = identity_of(config.cache)  # checked again before the run is written: an encode meanwhile is refused
    data = open_train_data(config.cache, getattr(config, "rungs", None), getattr(config, "layer", None), config.arch)
    graph = data.graph
    if getattr(config, "rung_weights", None) is not None and len(config.rung_weights) != len(data.layers):
        raise InputError(f"--rung-weights: {len(config.rung_weights)} weights for {len(data.layers)} rungs {data.layers}")
    splits = training_splits(graph, config.split, config.seeds)
    tuning = data.manifest.get("model_tuning")
    if tuning and any(s != tuning.get("seed") or config.split != tuning.get("split") for s in config.seeds):
        warn(f"cache {config.cache}: its LLM was tuned on the training labels of seed {tuning.get('seed')}'s split "
             f"({tuning.get('run')}); other seeds' or splits' validation and test nodes may include those nodes")
    sampler = Sampler(
        graph.edge_index, graph.num_nodes, mode=config.resolved_sampler, fanout=config.fanout, hops=config.hops,
        num_walks=config.num_walks, walk_length=config.walk_length, restart_p=config.restart_p,
    )
    spec = model_spec(config, data.reader.hidden_size, graph.num_classes, len(data.layers))
    if config.init is not None:
        from stage2_train.checkpoint import load_warm_start, warm_start_weights

        load_warm_start(build_model(spec), warm_start_weights(config.init, spec, data.layers, list(graph.label_names), data.manifest, config.seeds[0]), config.init)  # refuse before training
    targets = np.unique(np.concatenate([v for sp in splits.values() for v in sp.values()]))
    features, feature_mode = open_run_features(config, data, group, spec, sampler, targets)
    labels = np.asarray(graph.labels)
    resolved = {
        **config.to_dict(),
        "cache": str(data.cache_path.resolve()),
        "graph_source": data.manifest["graph_source"],
        "graph_fingerprint": graph.fingerprint,
        cache_binding.KEY: bound,
        "num_nodes": graph.num_nodes,
        "layers": data.layers,
        "label_names": list(graph.label_names),
        "model": spec,
        "world_size": group.world_size if group is not None else 1,
        # in-memory, out-of-core (and its budget), rank shares or the live LLM; the budget found
        # free without --memory-budget is measured, so it goes to cost.json
        "features": {k: v for k, v in feature_mode.items() if not (k == "limit_bytes" and config.memory_budget is None)},
    }
    memory_limit = feature_mode.get("limit_bytes")

    # --- loop, one model per seed; RUN.resume keeps what a rerun of the same command continues from
    reset_peak_memory(config.device)
    results, sizes, costs, backward = [], {}, [], state.backward_params
    log_default_split(graph, config.split)
    with CheckpointWriter(config.out, config.overwrite) if group is None or group.is_main else NoWriter() as writer:
        writer.write_config(resolved, data.manifest, flag_values(config))
        on_epoch = state.recorder(writer)
        for seed in config.seeds:
            split = splits[seed]
            sizes[seed] = {k: int(len(v)) for k, v in split.items()}
            if state.restore(seed, writer, results, costs):  # finished before the run was stopped: never redone
                continue
            if isinstance(features, ShardFeatures):
                load_share(group, features, sampler, split, seed)
            seed_everything(seed)
            model = build_model(spec)
            if config.init is not None:
                load_warm_start(model, warm_start_weights(config.init, spec, data.layers, list(graph.label_names), data.manifest, seed), config.init)
            t_seed = state.start_seed(seed)
            with progress(config.epochs, f"{config.arch} seed {seed}", unit="epochs") as tracker:
                r = train_seed(model, features, sampler, split, labels, config, seed, on_epoch, tracker, group,
                               layers=data.layers if config.arch == "ladder" else None, state=state)
            costs.append({"train_s": time.perf_counter() - t_seed, "epoch_s": r.epoch_s, "epochs_run": r.epochs_run})
            if backward is None and group is None:  # ranks hold only their share of the features
                backward = measure_backward(model, features, sampler, split["train"][: config.batch_size], labels, config)
            writer.save_weights(seed, r.state_dict)
            state.finish_seed(r, costs[-1], backward)
            kill_point(f"after seed {seed}")
            results.append(r)
            log(
                f"seed {seed}: best epoch {r.best_epoch}/{r.epochs_run}, "
                + (f"depth {r.answer + 1} of {len(r.val_acc)} rungs (LLM state {data.layers[r.answer]}), " if getattr(config, "depth", None) == "val" else "")
                + f"val {r.val_acc[r.answer]:.4f}, test {format_test_acc(r.test_acc[r.answer], '.4f')}, {r.epoch_s:.2f}s/epoch{peak_memory_text(config.device)}"
                + (f", exit policy {describe_choice(r.exit_policy)}" if r.exit_policy else "")
                + (f", test {100 * r.exit_policy['test_acc']:.2f}% with it" if r.exit_policy and "test_acc" in r.exit_policy else "")
            )

        # --- save
        summary = summarize(results, data.layers, config, sizes)
        for entry, cost in zip(summary["per_seed"], costs):
            entry["train_s"] = cost["train_s"]
        summary["cost"] = ledger(costs, count_trainable(build_model(spec)), backward, memory, data.manifest,
                                 reads_cache=config.reads_cache, max_batches=config.max_batches,
                                 earlier_peaks=state.earlier_peaks())
        summary["device"], summary["gpu_peak_memory_bytes"] = config.device, peak_memory(config.device)
        summary["memory_limit_bytes"] = memory_limit
        writer.write_summary(*split_cost(summary))
        if config.reads_cache:
            cache_binding.check_unchanged(config.cache, bound, "training")
        kill_point("commit")
        writer.commit()
    kill_point("committed")
    state.remove()
    log(summary_line(config, summary))
    return summary


NO_TEST = "n/a (no labelled test node)"


def format_test_acc(acc: float | None, spec: str) -> str:
    """A test accuracy for the log; a split without labelled test nodes has none."""
    return NO_TEST if acc is None or math.isnan(acc) else format(acc, spec)


def summary_line(config, summary: dict) -> str:
    """The closing log line of a training run (every arch)."""
    exits = (f" (with each seed's exit policy, what infer answers: test {100 * summary['exit_test_acc_mean']:.2f} ± "
             f"{100 * summary['exit_test_acc_std']:.2f})" if summary.get("exit_test_acc_mean") is not None else "")
    test = summary["test_acc_mean"]
    test = NO_TEST if test is None or math.isnan(test) else f"{100 * test:.2f} ± {100 * summary['test_acc_std']:.2f}"
    return (f"{config.arch}: test {test}, "
            f"val {100 * summary['val_acc_mean']:.2f}{exits} over seeds {list(config.seeds)} -> {config.out}")
