"""``pipeline bench infer``: what early exit buys on the test nodes, with real LLM stepping.

Every policy re-encodes the test nodes' texts with the LLM (known neighbours from the cache),
timed end to end, against ``none`` (full depth). Two confidence thresholds are chosen on
VALIDATION nodes, never on test: the full-depth per-rung logits of the validation nodes
(from the cache when present, else the LLM) are replayed through every candidate threshold
(``policies.replay_counts``), and we keep the cheapest threshold within 0.5% and within 1.0%
relative validation-accuracy drop. The cheapest within 1.0% on these validation nodes
(``policies.choose_policy``, the rule ``pipeline train`` uses) is marked ``chosen_on_val``. The
policy the run stored (chosen by ``pipeline train`` on all its validation nodes; what
``pipeline infer`` runs unless ``--exit`` is given) is timed too and marked ``infer_default``:
with ``--max-targets`` below the validation size the two can differ.

Per policy: ``accuracy``, ``rel_drop`` = (acc_none - acc) / acc_none, ``speedup`` =
wall(none) / wall(policy) (against the run's chosen depth: its last rung's LLM state),
``layer_fraction`` = LLM layers run / layers at the run's depth; and against the whole LLM:
``speedup_vs_full_llm`` = full_llm_s / wall(policy), where ``full_llm_s`` times the LLM alone
running all its layers over the same test texts (no ladder: a full-depth ladder costs at
least that, so this speed-up is a lower bound), ``llm_layer_fraction`` = LLM layers run /
(texts x all layers).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.core.bench_json import write_bench
from pipeline.core.progress import log
from stage3_infer.config import BenchConfig



VAL_DROPS = (0.005, 0.01)  # the two confidence thresholds timed: cheapest within these val drops


def val_rung_logits(session, targets: np.ndarray) -> torch.Tensor:
    """Full-depth logits (S, M, C) of validation targets: cached states if present, else the LLM."""
    from stage2_train.exit_policies import parse_exit
    from stage3_infer.run import predict

    s = session
    if s.cached is None:
        out = []
        predict(s, targets, parse_exit("none"), show_progress=False, collect=out)
        return torch.cat(out, dim=1)
    parts = []
    with torch.no_grad():
        for a in range(0, len(targets), s.sample_batch):
            sub = s.sampler.sample(targets[a : a + s.sample_batch])
            parts.append(s.checkpoint.model(s.cached(sub.nodes), sub))  # (S, B, C)
    return torch.cat(parts, dim=1)


def run_bench(config: BenchConfig) -> dict:
    from pipeline.core.devices import peak_memory, reset_peak_memory
    from stage3_infer.config import InferConfig
    from stage2_train.exit_policies import (CANDIDATES, CONFIDENCE_CANDIDATES, FIXED_CANDIDATES, choose_policy, parse_exit,
                                            replay_counts)
    from stage3_infer.run import open_session, predict
    from stage3_infer.targets import select_targets

    # --- setup
    config.validate()
    session = open_session(InferConfig(config.checkpoint, out=Path("."), batch_invariant=config.batch_invariant,
                                       batch_tokens=config.batch_tokens, batch_size=config.batch_size,
                                       device=config.device,
                                       dtype=config.dtype, allow_dtype_mismatch=config.allow_dtype_mismatch))
    ckpt, graph = session.checkpoint, session.g.graph

    def pick(name: str) -> np.ndarray:
        return select_targets(session.g, name, None, ckpt.config.get("split"), ckpt.seed)[: config.max_targets]

    val, test = pick("val"), pick("test")
    labels = np.asarray(graph.labels)

    # --- thresholds on validation only
    stored, why = session.exit_spec, session.exit_source  # what `pipeline infer` runs without --exit
    replayed = replay_counts(val_rung_logits(session, val), torch.as_tensor(labels[val]), session.layers,
                             tuple(dict.fromkeys([*CANDIDATES, stored])))
    counts = {k: replayed[k] for k in CANDIDATES}  # a stored policy outside them (e.g. layer:I) is timed, never chosen here
    last = session.layers[-1]
    replay = {k: (c / n if n else 0.0, run / (n * last) if n else 1.0) for k, (c, n, run) in replayed.items()}  # (acc, layer fraction)
    base_acc = replay["none"][0]
    drop = {k: (base_acc - a) / base_acc if base_acc else 0.0 for k, (a, _) in replay.items()}
    chosen = []
    for limit in VAL_DROPS:  # the cheapest confidence threshold within each drop, by choose_policy's rule
        pool = {k: c for k, c in counts.items() if k == "none" or (k.startswith("confidence:") and k not in chosen)}
        pick = choose_policy(pool, last, max_rel_drop=limit)["policy"]
        chosen.append(pick if pick != "none" else f"confidence:{CONFIDENCE_CANDIDATES[-1 - len(chosen)]}")
    default = choose_policy(counts, last)["policy"]  # `pipeline train`'s rule on these validation nodes
    policies = list(dict.fromkeys([*FIXED_CANDIDATES, *chosen, stored]))
    log(f"bench infer: thresholds chosen on {len(val)} validation nodes: {chosen}; cheapest within 1% on val: {default}; "
        f"infer default: {stored} ({why})")

    # --- timed runs on test, texts re-encoded by the LLM
    predict(session, test[: min(len(test), 8)], parse_exit("none"), show_progress=False)  # warm-up
    rows = {}
    for spec in policies:
        reset_peak_memory(session.device)
        runs = [predict(session, test, parse_exit(spec, num_rungs=len(session.layers)), show_progress=False) for _ in range(config.repeats)]
        r = min(runs, key=lambda x: x.wall_time_s)
        acc = float((r.tracker.pred.numpy() == labels[test]).mean())
        rows[spec] = {"accuracy": acc, "wall_time_s": r.wall_time_s, "layer_fraction": r.layer_evals / r.full_depth_evals,
                      "mean_exit_layer": float(np.asarray(session.layers)[r.tracker.exit_rung.numpy()].mean()),
                      "texts_per_s": len(test) / r.wall_time_s, "gpu_peak_memory_bytes": peak_memory(session.device)}
        log(f"bench infer: {spec}: accuracy {100 * acc:.2f}%, {r.wall_time_s:.1f}s, layers {100 * rows[spec]['layer_fraction']:.1f}%")
    full_llm_s, llm_layers = time_full_llm(session, test)
    log(f"bench infer: the whole LLM ({llm_layers} layers) over the {len(test)} test texts: {full_llm_s:.1f}s")
    base = rows["none"]
    table = {}
    for spec, row in rows.items():
        table[spec] = {
            "accuracy": row["accuracy"],
            "rel_drop": (base["accuracy"] - row["accuracy"]) / base["accuracy"] if base["accuracy"] else 0.0,
            "speedup": base["wall_time_s"] / row["wall_time_s"],
            "layer_fraction": row["layer_fraction"],
            "speedup_vs_full_llm": full_llm_s / row["wall_time_s"],
            "llm_layer_fraction": row["layer_fraction"] * session.layers[-1] / llm_layers,
            "full_llm_s": round(full_llm_s, 3),
            "wall_time_s": round(row["wall_time_s"], 3),
            "mean_exit_layer": row["mean_exit_layer"],
            "val_accuracy": replay[spec][0],
            "val_rel_drop": drop[spec],
            "chosen_on_val": spec == default,
            "infer_default": spec == stored,
            "num_test": int(len(test)),
            "num_val": int(len(val)),
            "seed": ckpt.seed,  # the trained seed timed: the one chosen on validation
            "texts_per_s": row["texts_per_s"],
            "device": session.device,
            "compute_dtype": session.compute_dtype,
            "gpu_peak_memory_bytes": row["gpu_peak_memory_bytes"],
        }

    # --- report
    print(format_table(table, session))
    if config.json_path is not None:
        write_bench(config.json_path, "infer", table)
    return table


def time_full_llm(session, targets: np.ndarray) -> tuple[float, int]:
    """Seconds to run the LLM alone through all its layers over the texts of ``targets``,
    batched as infer batches them, and the number of layers."""
    import time

    from stage3_infer.llm_runner import TextRunner

    texts = session.g.graph.texts
    layers = session.stepper.num_states - 1
    start = time.perf_counter()
    runner = TextRunner(session.stepper, [texts[int(u)] for u in targets], session.batch_tokens, session.max_length,
                        session.pooling, session.batch_size)
    runner.advance(layers, torch.ones(len(targets), dtype=torch.bool))
    return time.perf_counter() - start, layers


def format_table(table: dict, session) -> str:
    name = session.stepper.loaded.spec.name
    lines = [
        f"pipeline bench infer: {session.checkpoint.path} ({name} on {session.device} {session.compute_dtype}, rungs {session.layers}), "
        f"{next(iter(table.values()))['num_test']} test nodes re-encoded; thresholds chosen on validation; speed-up and "
        f"layers run against the run's depth (LLM state {session.layers[-1]}), 'vs all L' against the whole LLM alone "
        f"({next(iter(table.values()))['full_llm_s']:.1f}s)",
        f"{'policy':<18}{'accuracy':>10}{'rel. drop':>11}{'speed-up':>10}{'layers run':>12}{'vs all L':>10}{'of all L':>10}{'wall s':>9}",
    ]
    for spec, r in table.items():
        marks = [m for m, on in (("chosen on val", r["chosen_on_val"]), ("infer default", r["infer_default"])) if on]
        mark = "  <- " + ", ".join(marks) if marks else ""
        lines.append(
            f"{spec:<18}{100 * r['accuracy']:>9.2f}%{100 * r['rel_drop']:>10.2f}%{r['speedup']:>9.2f}x"
            f"{100 * r['layer_fraction']:>11.1f}%{r['speedup_vs_full_llm']:>9.2f}x{100 * r['llm_layer_fraction']:>9.1f}%"
            f"{r['wall_time_s']:>9.1f}{mark}"
        )
    return "\n".join(lines)
