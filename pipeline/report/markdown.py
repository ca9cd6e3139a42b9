"""``report.md``: one section per question a reader asks, each with its table and figure.

Sections: what was found; accuracy (ladder vs same-encoder baselines); cost against
accuracy (every run's ledger, fine-tuning baselines included); exit heads over
depth with gates; training curves; early exit (trade-off and where nodes exit); benchmarks;
what is missing and the command that creates it. A section without its artifacts says so.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from pipeline.core.progress import warn
from pipeline.report.collect import Collected, dataset_name
from pipeline.report.cost import cost_section
from pipeline.report.document import CREATE, Document, pct
from pipeline.report.quality import accuracy_section, heads_section, training_section
from pipeline.report.speed import benchmarks_section, early_exit_section


def build(found: Collected, out: Path, base: Path, out_final: Path | None = None) -> Document:
    """Write the figures into ``out`` and return the document; ``out_final``: where it will live."""
    doc = Document(out, base, out_final)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    doc.add("# ENGINE pipeline report", "", f"Generated {when} from {', '.join(f'`{r}`' for r in found.roots)}.", "")
    for section in (_found, accuracy_section, cost_section, heads_section, training_section, early_exit_section, benchmarks_section):
        try:
            section(found, doc)
        except Exception as err:  # an artifact with unexpected values costs one section, not the report
            name = section.__name__.strip("_").replace("_section", "")
            warn(f"report: section '{name}' failed: {type(err).__name__}: {err}")
            doc.add(f"_This section could not be drawn ({type(err).__name__}: {err})._", "")
            doc.missing.append(f"section '{name}': {type(err).__name__}: {err}")
    _missing(found, doc)
    return doc


def _found(found: Collected, doc: Document) -> None:
    doc.add("## What was found", "")
    rows = []
    for c in found.caches:
        m = c.manifest
        state = "complete" if c.blocks_done == c.blocks_total else f"INCOMPLETE: {c.blocks_done}/{c.blocks_total} blocks"
        rows.append(["encode cache", f"`{doc.rel(c.path)}`", f"{m.get('model')} on {dataset_name(m.get('graph_source'))}, "
                     f"{m.get('num_nodes')} nodes, states {m.get('layers')}, H={m.get('hidden_size')}, "
                     f"{m.get('storage_dtype')}, {c.disk_bytes / 1e6:.1f} MB, {state}"])
        if c.blocks_done != c.blocks_total:
            doc.missing.append(f"cache `{doc.rel(c.path)}` is incomplete ({c.blocks_total - c.blocks_done} blocks missing): "
                               f"complete it with `{_completion(c)}`")
    for r in found.runs:
        seeds = r.summary.get("seeds") or [s.get("seed") for s in r.summary.get("per_seed", [])]
        rows.append(["training run", f"`{doc.rel(r.path)}`", f"{r.arch} on {r.dataset} ({r.encoder}), seeds {seeds}, "
                     f"{len(r.metrics)} epoch lines"])
    for i in found.infers:
        s = i.summary
        acc = f"accuracy {pct(s['accuracy'])}%" if s.get("accuracy") is not None else "no labelled targets"
        rows.append(["infer output", f"`{doc.rel(i.path)}`", f"policy {s.get('policy', '?')}, {len(i.exit_layers)} nodes, {acc}"])
    for b in found.benches:
        rows.append([f"bench {b.kind}", f"`{doc.rel(b.path)}`", _bench_line(b)])
    if rows:
        doc.table(["artifact", "path", "what"], rows)
    else:
        doc.add("Nothing readable was found.", "")
    for p in found.problems:
        doc.missing.append(f"could not read {p}")




def _missing(found: Collected, doc: Document) -> None:
    """What is not there (or not readable), each with the command that creates it; then the files."""
    if not found.caches:
        doc.missing.append(f"encode cache: none under the given folder(s); {CREATE['cache']}")
    if not found.infers:
        doc.missing.append(f"infer output (exit histogram, trade-off points): {CREATE['infer']}")
    for kind, key in (("encode", "encode"), ("train", "train"), ("infer", "bench_infer")):
        if not found.bench(kind):
            doc.missing.append(f"bench {kind} figures: {CREATE[key]}")
    doc.add("## Missing or unreadable", "")
    if doc.missing:
        doc.add(*(f"- {m}" for m in dict.fromkeys(doc.missing)), "")
    else:
        doc.add("Nothing: every stage and benchmark is present.", "")
    names = ", ".join(f"`{p.name}`" for p in doc.figures) or "none"
    doc.add("---", "", f"Files in `{doc.out_final}`: `report.md` and {len(doc.figures)} figure(s): {names}.", "")


def _completion(c) -> str:
    from stage1_encode.cache.manifest import completion_command

    try:
        return completion_command(c.manifest, c.path)
    except KeyError:
        return f"pipeline encode GRAPH --out {c.path}"


def _bench_line(b) -> str:
    d = b.data
    if b.kind == "encode":
        return f"{d.get('texts_per_s', 0):.1f} texts/s, {d.get('speedup_vs_naive') or 0:.2f}x naive"
    if b.kind == "train":
        return f"caching speed-up {d.get('caching_speedup', 0):.1f}x on {d.get('graph')} ({d.get('model')})"
    return f"{len(d)} policies: {', '.join(d)}"
