"""``pipeline bench infer``: what early exit buys on the test nodes, with real LLM stepping.

Every policy re-encodes the test nodes' texts with the LLM (known neighbours from the cache),
timed end to end, against ``none`` (full depth). Two confidence thresholds are chosen on
VALIDATION nodes, never on test: the full-depth per-rung logits of the validation nodes
(from the cache when present, else the LLM) are replayed through every candidate threshold
(``policies.decide``), and we keep the cheapest threshold within 0.5% and within 1.0% relative
validation-accuracy drop. The policy with the fewest layers within 1.0% on validation is
marked ``chosen_on_val``.

Per policy: ``accuracy``, ``rel_drop`` = (acc_none - acc) / acc_none, ``speedup`` =
wall(none) / wall(policy), ``layer_fraction`` = LLM layers run / layers at full depth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.core.bench_json import write_bench
from pipeline.core.progress import log
from stage3_infer.config import BenchConfig



CANDIDATE_THRESHOLDS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.975, 0.99)
VAL_DROPS = (0.005, 0.01)  # the two confidence thresholds: cheapest within these val drops
FIXED = ("none", "patience:1", "patience:2")


def val_rung_logits(session, targets: np.ndarray) -> torch.Tensor:
    """Full-depth logits (S, M, C) of validation targets: cached states if present, else the LLM."""
    from stage3_infer.policies import parse_exit
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


def choose_thresholds(logits: torch.Tensor, labels: np.ndarray, last_layer: int, layers: list[int]) -> dict:
    """Replay candidate policies on validation logits -> {spec: (val acc, val layer fraction)}."""
    from stage3_infer.policies import decide, parse_exit

    y = torch.as_tensor(labels)
    found = {}
    for spec in [*FIXED, *(f"confidence:{t}" for t in CANDIDATE_THRESHOLDS)]:
        t = decide(parse_exit(spec), logits)
        acc = float((t.pred == y).double().mean())
        frac = float(torch.as_tensor(layers)[t.exit_rung].double().mean()) / last_layer
        found[spec] = (acc, frac)
    return found


def run_bench(config: BenchConfig) -> dict:
    from pipeline.core.devices import peak_memory, reset_peak_memory
    from stage3_infer.config import InferConfig
    from stage3_infer.policies import parse_exit
    from stage3_infer.run import open_session, predict
    from stage3_infer.targets import select_targets

    # --- setup
    config.validate()
    session = open_session(InferConfig(config.checkpoint, out=Path("."), batch_tokens=config.batch_tokens, batch_size=config.batch_size,
                                       device=config.device,
                                       dtype=config.dtype, allow_dtype_mismatch=config.allow_dtype_mismatch))
    ckpt, graph = session.checkpoint, session.g.graph

    def pick(name: str) -> np.ndarray:
        return select_targets(session.g, name, None, ckpt.config.get("split"), ckpt.seed)[: config.max_targets]

    val, test = pick("val"), pick("test")
    labels = np.asarray(graph.labels)

    # --- thresholds on validation only
    replay = choose_thresholds(val_rung_logits(session, val), labels[val], session.layers[-1], session.layers)
    base_acc = replay["none"][0]
    drop = {k: (base_acc - a) / base_acc if base_acc else 0.0 for k, (a, _) in replay.items()}
    chosen = []
    for limit in VAL_DROPS:
        ok = [k for k in replay if k.startswith("confidence:") and drop[k] <= limit + 1e-12 and k not in chosen]
        # cheapest on validation; among equally cheap ones the higher (safer) threshold
        ok.sort(key=lambda k: (replay[k][1], -float(k.split(":")[1])))
        chosen.append(ok[0] if ok else f"confidence:{CANDIDATE_THRESHOLDS[-1 - len(chosen)]}")
    policies = [*FIXED, *dict.fromkeys(chosen)]
    within = [p for p in policies if drop[p] <= VAL_DROPS[-1] + 1e-12]
    default = min(within, key=lambda p: replay[p][1])
    log(f"bench infer: thresholds chosen on {len(val)} validation nodes: {chosen}; cheapest within 1% on val: {default}")

    # --- timed runs on test, texts re-encoded by the LLM
    predict(session, test[: min(len(test), 8)], parse_exit("none"), show_progress=False)  # warm-up
    rows = {}
    for spec in policies:
        reset_peak_memory(session.device)
        runs = [predict(session, test, parse_exit(spec), show_progress=False) for _ in range(config.repeats)]
        r = min(runs, key=lambda x: x.wall_time_s)
        acc = float((r.tracker.pred.numpy() == labels[test]).mean())
        rows[spec] = {"accuracy": acc, "wall_time_s": r.wall_time_s, "layer_fraction": r.layer_evals / r.full_depth_evals,
                      "mean_exit_layer": float(np.asarray(session.layers)[r.tracker.exit_rung.numpy()].mean()),
                      "texts_per_s": len(test) / r.wall_time_s, "gpu_peak_memory_bytes": peak_memory(session.device)}
        log(f"bench infer: {spec}: accuracy {100 * acc:.2f}%, {r.wall_time_s:.1f}s, layers {100 * rows[spec]['layer_fraction']:.1f}%")
    base = rows["none"]
    table = {}
    for spec, row in rows.items():
        table[spec] = {
            "accuracy": row["accuracy"],
            "rel_drop": (base["accuracy"] - row["accuracy"]) / base["accuracy"] if base["accuracy"] else 0.0,
            "speedup": base["wall_time_s"] / row["wall_time_s"],
            "layer_fraction": row["layer_fraction"],
            "wall_time_s": round(row["wall_time_s"], 3),
            "mean_exit_layer": row["mean_exit_layer"],
            "val_accuracy": replay[spec][0],
            "val_rel_drop": drop[spec],
            "chosen_on_val": spec == default,
            "num_test": int(len(test)),
            "num_val": int(len(val)),
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


def format_table(table: dict, session) -> str:
    name = session.stepper.loaded.spec.name
    lines = [
        f"pipeline bench infer: {session.checkpoint.path} ({name} on {session.device} {session.compute_dtype}, rungs {session.layers}), "
        f"{next(iter(table.values()))['num_test']} test nodes re-encoded; thresholds chosen on validation",
        f"{'policy':<18}{'accuracy':>10}{'rel. drop':>11}{'speed-up':>10}{'layers run':>12}{'wall s':>9}",
    ]
    for spec, r in table.items():
        mark = "  <- chosen on val" if r["chosen_on_val"] else ""
        lines.append(
            f"{spec:<18}{100 * r['accuracy']:>9.2f}%{100 * r['rel_drop']:>10.2f}%{r['speedup']:>9.2f}x"
            f"{100 * r['layer_fraction']:>11.1f}%{r['wall_time_s']:>9.1f}{mark}"
        )
    return "\n".join(lines)
