"""The report's figures: one function per figure, each writes one PNG and returns its path.

Matplotlib runs headless (Agg). Figures are sized to be read at 100% in a Markdown viewer:
about 9 x 4.5 inches at 110 dpi, 10-11 pt text, values written on the bars.
"""

from __future__ import annotations

from pathlib import Path

DPI = 110
STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(STYLE)
    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    _plt().close(fig)
    return path


def _barh(ax, labels: list[str], values: list[float], errors: list[float] | None = None, fmt: str = "{:.1f}", color=None,
          log: bool = False) -> None:
    """Horizontal bars, first label on top, each value written just past the end of its bar."""
    y = list(range(len(labels)))[::-1]
    ax.barh(y, values, xerr=errors, color=color or "C0", alpha=0.85, capsize=3)
    ax.set_yticks(y, labels)
    ax.grid(axis="y", visible=False)
    ends = [v + (e or 0) for v, e in zip(values, errors or [0] * len(values))]
    top = max(ends + [1e-9])
    for yi, v, e, end in zip(y, values, errors or [None] * len(values), ends):
        text = fmt.format(v) + (f" ± {fmt.format(e)}" if e else "")
        ax.text(end * 1.15 if log else end + top * 0.02, yi, text, va="center", fontsize=9)
    if log:
        ax.set_xscale("log")
        ax.set_xlim(min(v for v in values if v > 0) / 3, top * 30)
    else:
        ax.set_xlim(0, top * 1.3)


def accuracy_bars(groups: dict[str, list[tuple[str, float, float]]], path: Path) -> Path:
    """Test accuracy (%) per model, one panel per dataset. groups: dataset -> [(label, mean, std)]."""
    plt = _plt()
    n = len(groups)
    rows = max(len(v) for v in groups.values())
    fig, axes = plt.subplots(n, 1, figsize=(9, 0.9 + n * (0.6 + 0.42 * rows)), squeeze=False)
    for ax, (dataset, items) in zip(axes[:, 0], groups.items()):
        colors = ["C1" if i[0].startswith("ladder") else "C0" for i in items]  # the ladder stands out
        _barh(ax, [i[0] for i in items], [100 * i[1] for i in items], [100 * i[2] for i in items], "{:.2f}", color=colors)
        ax.set_title(f"{dataset}: test accuracy (mean ± std over seeds)")
        ax.set_xlabel("test accuracy (%)")
    return _save(fig, path)


def cost_accuracy(points: list[tuple[str, str, float, float, int]], path: Path) -> Path:
    """Test accuracy against total cost (seconds, log scale), one point per run, its area
    growing with the trainable parameters. points: [(dataset, label, total_s, acc, trainable)]."""
    import math

    plt = _plt()
    datasets = list(dict.fromkeys(p[0] for p in points))
    fig, axes = plt.subplots(1, len(datasets), figsize=(9 if len(datasets) == 1 else 12, 5), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        mine = [p for p in points if p[0] == dataset]
        for k, (_, label, total, acc, params) in enumerate(mine):
            size = 20 + 25 * max(math.log10(max(params, 1)) - 2, 0) ** 1.5  # 100 params -> 20, 100M -> ~390
            color = "C1" if label.startswith("ladder") else f"C{(k % 8) + 2}"
            ax.scatter([total], [100 * acc], s=size, color=color, alpha=0.75, edgecolor="black", lw=0.5, zorder=3)
            ax.annotate(f"{label} ({params / 1e6:.3g}M)" if params >= 1e5 else f"{label} ({params / 1e3:.3g}k)",
                        (total, 100 * acc), textcoords="offset points", xytext=(7, 4 - 13 * (k % 2)), fontsize=8.5)
        ax.set_xscale("log")
        ax.set_xlabel("total cost per seed (s, log scale): encode + tuning + training")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{dataset}: cost against accuracy (point area: trainable parameters)")
        ax.margins(x=0.3, y=0.15)
    return _save(fig, path)


def rung_heads(layers: list[int], heads: list[dict], gates_per_seed: list[list[float]], title: str, path: Path) -> Path:
    """Top: val/test accuracy of every rung's exit head over LLM depth; bottom: gate values g_i.

    heads: summary["heads"] (S,) with val/test mean and std; gates_per_seed: (seeds, S).
    """
    import numpy as np

    plt = _plt()
    x = np.asarray(layers)
    fig, (ax, axg) = plt.subplots(2, 1, figsize=(9, 6.2), sharex=True, gridspec_kw={"height_ratios": [2.2, 1]})
    for split, color, marker in (("test", "C0", "o"), ("val", "C1", "s")):
        mean = np.array([100 * (h.get(f"{split}_acc_mean") or np.nan) for h in heads])
        std = np.array([100 * (h.get(f"{split}_acc_std") or 0.0) for h in heads])
        ax.plot(x, mean, marker=marker, color=color, label=f"{split} accuracy (mean over seeds)")
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.15)
    for xi, h in zip(x, heads):
        if h.get("test_acc_mean") is not None:
            ax.annotate(f"{100 * h['test_acc_mean']:.1f}", (xi, 100 * h["test_acc_mean"]), textcoords="offset points",
                        xytext=(0, -15), ha="center", fontsize=8.5, color="C0")
    ax.set_ylabel("accuracy of the rung's head (%)")
    ax.set_title(title)
    ax.legend(loc="best")
    if gates_per_seed and len(gates_per_seed[0]) == len(x):
        g = np.asarray(gates_per_seed, dtype=float)  # (seeds, S)
        for row in g:
            axg.scatter(x, row, color="C2", alpha=0.35, s=14)
        axg.plot(x, g.mean(0), marker="D", color="C2", label="gate g_i = sigmoid(a_i / T), mean over seeds")
        axg.axvline(x[0], color="grey", lw=0.8, ls=":")
        axg.text(x[0], 1.02, " g_0 unused", fontsize=8, color="grey", va="bottom")
        axg.legend(loc="best")
    else:
        axg.text(0.5, 0.5, "no gate values recorded", transform=axg.transAxes, ha="center")
    axg.set_ylim(-0.05, 1.15)
    axg.set_ylabel("gate")
    axg.set_xlabel("LLM hidden state (rung input layer)")
    axg.set_xticks(x)
    return _save(fig, path)


def training_curves(metrics: list[dict], best: dict[int, int], title: str, ladder: bool, path: Path) -> Path:
    """Loss and validation accuracy (last head of a ladder) per epoch, one line per seed; dot at the best epoch."""
    plt = _plt()
    fig, (axl, axv) = plt.subplots(1, 2, figsize=(10, 4))
    seeds = sorted({m["seed"] for m in metrics})
    for k, seed in enumerate(seeds):
        lines = sorted((m for m in metrics if m["seed"] == seed), key=lambda m: m["epoch"])
        ep = [m["epoch"] for m in lines]
        color = f"C{k % 10}"
        axl.plot(ep, [m["loss"] for m in lines], color=color, lw=1.3, label=f"seed {seed}")
        axv.plot(ep, [100 * m["val_acc"] for m in lines], color=color, lw=1.3, label=f"seed {seed}")
        b = best.get(seed)
        hit = [m for m in lines if m["epoch"] == b]
        if hit:
            axv.scatter([b], [100 * hit[0]["val_acc"]], color=color, s=40, zorder=3, edgecolor="black")
    axl.set(title="training loss (summed over the exit heads)" if ladder else "training loss", xlabel="epoch", ylabel="loss")
    head = ", last head" if ladder else ""
    axv.set(title=f"validation accuracy{head} (● best epoch)", xlabel="epoch", ylabel="accuracy (%)")
    for ax in (axl, axv):
        ax.legend(ncol=2 if len(seeds) > 3 else 1)
    fig.suptitle(title)
    return _save(fig, path)


def tradeoff(series: dict[str, list[tuple[str, float, float]]], fixed: dict[str, list[tuple[str, float, float]]], path: Path) -> Path:
    """Accuracy vs fraction of LLM layers run, one point per policy. series: name -> [(policy, frac, acc)].

    ``fixed``: the same for fixed depths (every node exits at rung i), drawn as dashed curves.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 5))
    for k, (name, points) in enumerate(fixed.items()):
        pts = sorted(points, key=lambda p: p[1])
        xs, ys = [100 * p[1] for p in pts], [100 * p[2] for p in pts]
        ax.plot(xs, ys, ls="--", marker=".", color="grey", alpha=0.8 - 0.2 * k, lw=1.2, label=name)
        for (policy, _, _), xi, yi in zip(pts, xs, ys):
            ax.annotate(policy, (xi, yi), textcoords="offset points", xytext=(0, -13), fontsize=7.5, color="grey", ha="center")
    markers = "os^Dv"
    for k, (name, points) in enumerate(series.items()):
        xs, ys = [100 * p[1] for p in points], [100 * p[2] for p in points]
        ax.scatter(xs, ys, s=60, marker=markers[k % len(markers)], color=f"C{k}", label=name, zorder=3)
        order = sorted(range(len(xs)), key=lambda j: xs[j])  # thin line through the series, cheapest first
        ax.plot([xs[j] for j in order], [ys[j] for j in order], color=f"C{k}", alpha=0.35, lw=1)
        for (policy, _, _), xi, yi in zip(points, xs, ys):
            ax.annotate(policy, (xi, yi), textcoords="offset points", xytext=(6, 5 - 12 * (k % 2)), fontsize=8.5, color=f"C{k}")
    ax.set_xlabel("LLM layers run (% of full depth)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("early exit: accuracy against LLM compute, one point per exit policy")
    ax.set_xlim(-3, 108)
    ax.margins(y=0.1)  # room for the labels under the lowest points
    ax.legend(loc="best")
    return _save(fig, path)


def exit_histograms(items: list[tuple[str, list[int], list[int]]], path: Path) -> Path:
    """Where nodes exit: count of nodes per exit layer. items: [(title, exit_layers (M,), rung layers (S,))]."""
    from collections import Counter

    plt = _plt()
    cols = min(len(items), 2)
    rows = (len(items) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols if cols > 1 else 9, 3.6 * rows), squeeze=False)
    for ax, (title, exits, rung_layers) in zip(axes.flat, items):
        counts = Counter(exits)
        xs = sorted(set(rung_layers) | set(counts))
        heights = [counts.get(x, 0) for x in xs]
        width = max(0.8, (max(xs) - min(xs)) / max(len(xs), 1) * 0.6) if xs else 0.8
        ax.bar(xs, heights, width=width, color="C4", alpha=0.85)
        total = max(sum(heights), 1)
        for x, h in zip(xs, heights):
            if h == 0:
                continue
            ax.text(x, h, f"{h}\n({100 * h / total:.0f}%)", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(xs)
        ax.set_ylim(0, max(heights + [1]) * 1.3)
        ax.set(title=title, xlabel="exit layer (LLM hidden state)", ylabel="nodes")
        ax.grid(axis="x", visible=False)
    for ax in list(axes.flat)[len(items):]:
        ax.set_visible(False)
    return _save(fig, path)


def bench_encode(data: dict, path: Path) -> Path:
    """Throughput of ``pipeline encode`` vs the naive loop; cache bytes per node vs the reference's."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.2))
    _barh(ax1, ["pipeline encode", "naive loop (batch 32, padded)"],
          [data["texts_per_s"], data.get("naive_texts_per_s") or 0.0], fmt="{:.1f}")
    ax1.set(title=f"encode throughput: {data.get('speedup_vs_naive', float('nan')):.2f}x the naive loop", xlabel="texts / s")
    if data.get("bytes_per_node") is not None:
        _barh(ax2, ["pipeline cache (rungs, fp16)", "reference (all states, fp32)"],
              [data["bytes_per_node"] / 1024, (data.get("reference_bytes_per_node") or 0) / 1024], fmt="{:.1f}", color="C1")
        ax2.set(title="cache size per node", xlabel="KiB / node")
    else:
        ax2.set_visible(False)
    where = " ".join(str(data[k]) for k in ("model", "device", "dtype") if data.get(k))
    util = f"; model FLOP/s = {100 * data['flops_fraction']:.1f}% of measured matmul rate" if data.get("flops_fraction") is not None else ""
    fig.suptitle(f"bench encode {where}{util}")
    return _save(fig, path)


def bench_train(data: dict, path: Path) -> Path:
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    extra = " (extrapolated)" if data.get("uncached_extrapolated") else ""
    _barh(ax1, ["from the cache", f"LLM in the loop{extra}"], [data["epoch_s_cached"], data["epoch_s_uncached"]],
          fmt="{:.2f} s", log=True)
    ax1.set(title=f"one training epoch: caching is {data['caching_speedup']:.1f}x faster", xlabel="seconds (log scale)")
    accs = data.get("accuracy") or {}
    if accs:
        _barh(ax2, list(accs), [100 * a["test_acc_mean"] for a in accs.values()],
              [100 * (a.get("test_acc_std") or 0) for a in accs.values()], fmt="{:.2f}", color="C2")
        ax2.set(title="test accuracy, same cache", xlabel="accuracy (%)")
    else:
        ax2.set_visible(False)
    return _save(fig, path)


def bench_infer(table: dict, path: Path) -> Path:
    plt = _plt()
    policies = list(table)
    fig, axes = plt.subplots(1, 3, figsize=(12, 0.9 + 0.45 * len(policies) + 1.2), sharey=True)
    labels = [p + ("  *" if table[p].get("chosen_on_val") else "") for p in policies]
    _barh(axes[0], labels, [100 * table[p]["accuracy"] for p in policies], fmt="{:.2f}")
    axes[0].set(title="test accuracy", xlabel="%")
    _barh(axes[1], labels, [table[p].get("speedup") or 0.0 for p in policies], fmt="{:.2f}x", color="C1")
    axes[1].set(title="wall-time speed-up vs none", xlabel="x")
    _barh(axes[2], labels, [100 * table[p]["layer_fraction"] for p in policies], fmt="{:.0f}%", color="C4")
    axes[2].set(title="LLM layers run", xlabel="% of full depth")
    fig.suptitle("bench infer (test nodes re-encoded by the LLM; * = chosen on validation)")
    return _save(fig, path)
