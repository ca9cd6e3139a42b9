"""Sections on what the pipeline saves: early exit (trade-off, exit layers) and the benchmarks."""

from __future__ import annotations

from pipeline.report import figures
from pipeline.report.collect import Collected
from pipeline.report.document import CREATE, Document, pct


def _num(v, fmt: str) -> str:
    return "–" if v is None else fmt.format(v)


def early_exit_section(found: Collected, doc: Document) -> None:
    doc.add("## Early exit: accuracy against LLM layers run", "")
    benches = found.bench("infer")
    if not found.infers and not benches:
        doc.add(f"_Missing: no infer output or infer benchmark; {CREATE['infer']} or {CREATE['bench_infer']}._", "")
        return
    doc.add("Each point is one exit policy: how many of the LLM's layers the nodes' texts ran through "
            "(100% = full depth) against the accuracy reached. ENGINE (paper): up to 5x faster with at most "
            "1.17% relative accuracy drop.", "")
    series: dict[str, list] = {}
    rows = []
    policies = [str(i.summary.get("policy", "?")) for i in found.infers]
    for i, policy in zip(found.infers, policies):
        s = i.summary
        label = policy if policies.count(policy) == 1 else f"{policy} ({doc.rel(i.path)})"
        if s.get("accuracy") is not None and s.get("layer_fraction") is not None:
            series.setdefault("pipeline infer outputs", []).append((label, s["layer_fraction"], s["accuracy"]))
        rows.append([f"`{doc.rel(i.path)}`", policy, pct(s.get("accuracy")), "–", "–", pct(s.get("layer_fraction")),
                     _num(s.get("mean_exit_layer"), "{:.1f}"), s.get("num_targets", len(i.exit_layers))])
    for b in benches:
        for policy, r in b.data.items():
            series.setdefault(f"bench infer ({doc.rel(b.path)})", []).append((policy, r["layer_fraction"], r["accuracy"]))
            mark = " (chosen on val)" if r.get("chosen_on_val") else ""
            rows.append([f"`{doc.rel(b.path)}`", policy + mark, pct(r["accuracy"]), pct(r.get("rel_drop")),
                         _num(r.get("speedup"), "{:.2f}x"), pct(r["layer_fraction"]), "–", r.get("num_test", "–")])
    doc.table(["from", "policy", "accuracy (%)", "rel. drop (%)", "speed-up", "layers run (%)", "mean exit layer", "nodes"], rows)
    fixed = _fixed_depth(found, doc)
    if series:
        if fixed:
            doc.add("Dashed: fixed depth `layer:I` (every node exits at rung I), the test accuracy of each exit head "
                    "in the training summary (mean over seeds, cached states).", "")
        doc.figure(figures.tradeoff, "early_exit_tradeoff.png", series, fixed, alt="accuracy against fraction of LLM layers run")
    else:
        doc.add("_No labelled targets among the infer outputs: no accuracy to plot._", "")
    if found.infers:
        items = []
        for i, policy in zip(found.infers, policies):
            acc = i.summary.get("accuracy")
            title = f"{doc.rel(i.path)}: {policy}" + (f", acc {100 * acc:.1f}%" if acc is not None else "")
            rungs = i.summary.get("rung_layers") or sorted(set(i.exit_layers))
            items.append((title, i.exit_layers, rungs))
        doc.add("Where nodes leave the ladder (exit layer = the LLM hidden state of the answering rung):")
        doc.figure(figures.exit_histograms, "exit_layers.png", items, alt="histogram of exit layers")
    else:
        doc.add(f"_No infer output: the exit-layer histogram needs {CREATE['infer']}._", "")


def _fixed_depth(found: Collected, doc: Document) -> dict[str, list]:
    """Per ladder run: (``layer:I``, layer_I / last layer, head I's test accuracy) for every rung I."""
    out = {}
    for r in found.runs:
        heads = r.summary.get("heads") or []
        if r.arch != "ladder" or not heads or not heads[-1].get("layer"):
            continue
        last = heads[-1]["layer"]
        points = [(f"layer:{i}", h["layer"] / last, h["test_acc_mean"]) for i, h in enumerate(heads)
                  if h.get("test_acc_mean") is not None]
        if points:
            out[f"fixed depth, exit heads of `{doc.rel(r.path)}`".replace("`", "")] = points
    return out


def benchmarks_section(found: Collected, doc: Document) -> None:
    doc.add("## Benchmarks", "")
    if not found.benches:
        doc.add("_Missing: no `bench*.json` found; the `pipeline bench encode|train|infer --json FILE` commands write them._", "")
        return
    for b in found.bench("encode"):
        d = b.data
        doc.add(f"### Encode (`{doc.rel(b.path)}`): {d.get('graph', '?')}, {d.get('model', '?')}, "
                f"{d.get('texts', '?')} texts, {d.get('device', '?')} {d.get('dtype', '')}".rstrip(), "")
        doc.table(["texts / s", "naive texts / s", "speed-up vs naive", "model FLOP/s of matmul peak (%)", "bytes / node",
                   "reference bytes / node (all states, fp32)"],
                  [[_num(d.get("texts_per_s"), "{:.1f}"), _num(d.get("naive_texts_per_s"), "{:.1f}"),
                    _num(d.get("speedup_vs_naive"), "{:.2f}x"), pct(d.get("flops_fraction")),
                    _num(d.get("bytes_per_node"), "{:,.0f}"), _num(d.get("reference_bytes_per_node"), "{:,.0f}")]])
        doc.figure(figures.bench_encode, f"{doc.slug(b.path.with_suffix(''))}.png", d, alt="encode benchmark")
    for b in found.bench("train"):
        d = b.data
        how = (f"extrapolated from {d.get('uncached_batches_timed')} of {d.get('batches_per_epoch')} batches"
               if d.get("uncached_extrapolated") else "a whole epoch")
        doc.add(f"### Train (`{doc.rel(b.path)}`): {d.get('graph')}, {d.get('model')}", "")
        doc.table(["epoch from cache (s)", "epoch with LLM inside (s)", "caching speed-up (paper 12x)"],
                  [[f"{d['epoch_s_cached']:.2f}", f"{d['epoch_s_uncached']:.2f} ({how})", f"{d['caching_speedup']:.1f}x"]])
        doc.figure(figures.bench_train, f"{doc.slug(b.path.with_suffix(''))}.png", d, alt="train benchmark")
    for b in found.bench("infer"):
        doc.add(f"### Infer (`{doc.rel(b.path)}`)", "", "Per-policy numbers are in the early-exit table above.")
        doc.figure(figures.bench_infer, f"{doc.slug(b.path.with_suffix(''))}.png", b.data, alt="infer benchmark")
