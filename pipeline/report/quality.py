"""Sections on how well the model does: accuracy table, exit heads over depth, training curves."""

from __future__ import annotations

from pipeline.report import figures
from pipeline.report.collect import Collected, TrainRun, dataset_name
from pipeline.report.document import ARCH_ORDER, CREATE, Document, pct


def _accuracy_rows(found: Collected) -> list[dict]:
    rows = [
        {"dataset": r.dataset, "encoder": r.encoder, "arch": r.arch, "mean": r.summary.get("test_acc_mean"),
         "std": r.summary.get("test_acc_std"), "val": r.summary.get("val_acc_mean"), "val_std": r.summary.get("val_acc_std"),
         "seeds": len(r.summary.get("per_seed", [])), "layers": r.summary.get("layers"), "source": r.path}
        for r in found.runs
    ]
    have = {(r["dataset"], r["encoder"], r["arch"]) for r in rows}
    for b in found.bench("train"):  # bench train's own runs, unless their folders were found too
        d = b.data
        for arch, a in (d.get("accuracy") or {}).items():
            key = (dataset_name(d.get("graph")), str(d.get("model")), arch)
            if key not in have:
                rows.append({"dataset": key[0], "encoder": key[1], "arch": arch, "mean": a.get("test_acc_mean"),
                             "std": a.get("test_acc_std"), "val": a.get("val_acc_mean"), "val_std": None,
                             "seeds": len(d.get("seeds") or []), "layers": _bench_layers(d.get("layers"), arch),
                             "source": b.path})
    return sorted(rows, key=lambda r: (r["dataset"], r["encoder"], ARCH_ORDER.get(r["arch"], 9), str(r["source"])))


def _bench_layers(layers, arch: str):
    """bench train's baselines read the last cached state (stage 2's default)."""
    if not layers:
        return None
    return layers if arch == "ladder" else [layers[-1]]


def accuracy_section(found: Collected, doc: Document) -> None:
    doc.add("## Accuracy: G-Ladder vs same-encoder baselines", "")
    rows = _accuracy_rows(found)
    if not rows:
        doc.add(f"_Missing: no training run found; {CREATE['run']} creates one._", "")
        doc.missing.append(f"training runs (accuracy, heads, curves): {CREATE['run']}")
        return
    doc.add("Test accuracy (%) at the best-validation epoch, mean ± std over seeds (population std).", "")
    doc.table(
        ["dataset", "encoder", "model", "LLM states", "test acc", "val acc", "seeds", "from"],
        [[r["dataset"], r["encoder"], f"**{r['arch']}**" if r["arch"] == "ladder" else r["arch"], r["layers"] or "last",
          pct(r["mean"], r["std"]), pct(r["val"], r["val_std"]), r["seeds"], f"`{doc.rel(r['source'])}`"] for r in rows],
    )
    groups: dict[str, list] = {}
    for r in rows:
        same = [x for x in rows if x["dataset"] == r["dataset"]]
        # name the run only where a dataset has two bars of one architecture or several encoders
        dup = sum(x["arch"] == r["arch"] for x in same) > 1 or len({x["encoder"] for x in same}) > 1
        name = f"{r['arch']} ({r['encoder']}, {doc.rel(r['source'])})" if dup else r["arch"]
        if r["mean"] is not None:
            groups.setdefault(r["dataset"], []).append((name, r["mean"], r["std"] or 0.0))
    if groups:
        doc.figure(figures.accuracy_bars, "accuracy.png", groups, alt="test accuracy per model and dataset")
    if not any(r["arch"] == "ladder" for r in rows):
        doc.missing.append(f"a G-Ladder run to compare with the baselines: {CREATE['ladder']}")
    if all(r["arch"] == "ladder" for r in rows):
        doc.missing.append("same-encoder baselines: `pipeline train CACHE_DIR --arch mlp|gcn|sage --out DIR` "
                           "(or `pipeline bench train`)")


def _ladders(found: Collected) -> list[TrainRun]:
    return [r for r in found.runs if r.arch == "ladder" and r.summary.get("heads")]


def heads_section(found: Collected, doc: Document) -> None:
    doc.add("## Exit heads over depth, with gates", "")
    ladders = _ladders(found)
    if not ladders:
        doc.add(f"_Missing: no G-Ladder training run; {CREATE['ladder']} creates one._", "")
        return
    doc.add("Every rung has its own classifier head; the curve shows how accuracy grows with the LLM depth the "
            "rung reads. The gate g_i weighs rung i's LLM state against the rung below (g_0 is unused).", "")
    for r in ladders:
        s = r.summary
        layers = s.get("layers") or [h["layer"] for h in s["heads"]]
        gates = [p.get("gates") for p in s.get("per_seed", []) if p.get("gates")]
        gmean = s.get("gates_mean") or []
        doc.add(f"### `{doc.rel(r.path)}`: {r.dataset}, {r.encoder}", "")
        doc.table(
            ["rung", "LLM state", "val acc", "test acc", "gate (mean)"],
            [[i, h.get("layer"), pct(h.get("val_acc_mean"), h.get("val_acc_std")), pct(h.get("test_acc_mean"), h.get("test_acc_std")),
              f"{gmean[i]:.3f}" if i < len(gmean) else "–"] for i, h in enumerate(s["heads"])],
        )
        depths = [(p.get("seed"), p["depth"]) for p in s.get("per_seed", [])
                  if type(p.get("depth")) is int and 1 <= p["depth"] <= len(layers)]
        if any(d < len(layers) for _, d in depths):
            doc.add("Depth chosen on validation (`--depth val`; the rungs above are dropped): "
                    + ", ".join(f"seed {seed} answers with rung {d - 1} (LLM state {layers[d - 1]})" for seed, d in depths) + ".", "")
        title = f"{r.dataset} / {r.encoder}: exit-head accuracy over depth ({len(s.get('per_seed', []))} seed(s))"
        doc.figure(figures.rung_heads, f"heads_{doc.slug(r.path)}.png", layers, s["heads"], gates, title,
                   alt=f"exit head accuracy and gates of {doc.rel(r.path)}")


def training_section(found: Collected, doc: Document) -> None:
    doc.add("## Training curves", "")
    if not found.runs:
        doc.add(f"_Missing: no training run; {CREATE['run']} creates one._", "")
        return
    for r in sorted(found.runs, key=lambda r: (r.dataset, ARCH_ORDER.get(r.arch, 9), str(r.path))):
        doc.add(f"### `{doc.rel(r.path)}`: {r.arch} on {r.dataset}", "")
        per_seed = r.summary.get("per_seed", [])
        doc.table(
            ["seed", "best epoch", "epochs run", "val acc", "test acc", "s / epoch"],
            [[p.get("seed"), p.get("best_epoch"), p.get("epochs_run"), pct(p.get("val_acc")), pct(p.get("test_acc")),
              f"{p['epoch_s']:.2f}" if p.get("epoch_s") is not None else "–"] for p in per_seed],
        )
        usable = [m for m in r.metrics if {"seed", "epoch", "loss", "val_acc"} <= m.keys() and m["val_acc"] is not None]
        if usable:
            best = {p.get("seed"): p.get("best_epoch") for p in per_seed}
            doc.figure(figures.training_curves, f"training_{doc.slug(r.path)}.png", usable, best,
                       f"{r.arch} on {r.dataset} ({r.encoder})", r.arch == "ladder", alt=f"training curves of {doc.rel(r.path)}")
        else:
            doc.add("_metrics.jsonl has no epoch lines to plot._", "")
