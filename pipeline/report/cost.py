"""The "cost against accuracy" section: every training run's cost ledger beside its accuracy.

Cost is what one seed costs from raw texts: for the archs on cached states the one-off
encode plus training (plus, for a cache of a tuned LLM, that tuning: the cascade), for the
fine-tuning archs their training alone (``summary.json["cost"]``, stage2_train/ledger.py).
"""

from __future__ import annotations

from pipeline.report import figures
from pipeline.report.collect import Collected
from pipeline.report.document import ARCH_ORDER, CREATE, Document, pct


def _count(n) -> str:
    if n is None:
        return "–"
    for unit, f in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= f:
            return f"{n / f:.2f}{unit}"
    return str(int(n))


def _seconds(s) -> str:
    return "unknown" if s is None else (f"{s:.0f}" if s >= 100 else f"{s:.1f}")


def _mib(b) -> str:
    return "–" if b is None else f"{b / 2**20:.0f}"


def cost_rows(found: Collected) -> list[dict]:
    """One row per run with a ledger: label, accuracy and the ledger's fields."""
    rows = []
    for r in found.runs:
        cost = r.summary.get("cost")
        if not cost:
            continue
        label = r.arch + (" (tuned LLM)" if cost.get("tuned_by") else "")
        rows.append({"run": r, "dataset": r.dataset, "label": label, "acc": r.summary.get("test_acc_mean"),
                     "std": r.summary.get("test_acc_std"), "seeds": len(r.summary.get("per_seed", [])), **cost})
    return sorted(rows, key=lambda x: (x["dataset"], ARCH_ORDER.get(x["run"].arch, 9), x["label"], str(x["run"].path)))


def cost_section(found: Collected, doc: Document) -> None:
    doc.add("## Cost against accuracy", "")
    rows = cost_rows(found)
    if not rows:
        doc.add(f"_Missing: no training run with a cost ledger (runs from before it was recorded have none); {CREATE['run']} creates one._", "")
        doc.missing.append(f"training runs with a cost ledger (cost against accuracy): {CREATE['run']}")
        return
    doc.add(
        "Per seed, from raw texts: **total** = one-off encode (cache archs) + fine-tuning of the encoding LLM (a tuned "
        "LLM's cache) + training. Training time includes the per-epoch validation; peak memory is the training "
        "process's peak RSS above its start on CPU (max allocated on GPU); backward params are the parameters the "
        "backward pass touches (frozen LLM weights included when the gradient runs through the LLM).", "",
    )
    doc.table(
        ["dataset", "model", "test acc", "seeds", "trainable params", "backward params", "peak memory (MiB)", "epochs",
         "s / epoch", "train s", "encode s", "tuning s", "total s", "from"],
        [[x["dataset"], f"**{x['label']}**" if x["run"].arch == "ladder" else x["label"], pct(x["acc"], x["std"]), x["seeds"],
          _count(x.get("trainable_params")), _count(x.get("backward_params")), _mib(x.get("peak_memory_bytes")),
          ",".join(map(str, x.get("epochs_run") or [])) + (f" (≤ {x['max_batches_per_epoch']} batches each)" if x.get("max_batches_per_epoch") else ""), _seconds(x.get("epoch_s_mean")), _seconds(x.get("train_s_mean")),
          _seconds(x.get("encode_s")) if x.get("encode_used") else "not used",
          _seconds(x.get("tuning_s")) if x.get("tuning_s") else "–", _seconds(x.get("total_s")), f"`{doc.rel(x['run'].path)}`"]
         for x in rows],
    )
    unknown = [x for x in rows if x.get("total_s") is None]
    if unknown:
        doc.add(f"_{len(unknown)} run(s) read a cache whose manifest records no encode time: total unknown, left out of the figure._", "")
    points = [(x["dataset"], x["label"], x["total_s"], x["acc"], x.get("trainable_params") or 1) for x in rows
              if x.get("total_s") and x["acc"] is not None]
    if points:
        doc.figure(figures.cost_accuracy, "cost_accuracy.png", points, alt="test accuracy against total cost per run")
