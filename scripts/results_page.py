"""Render the headline tables of docs/results.md from docs/results/*.json.

    python scripts/results_page.py           # rewrite the tables between their markers
    python scripts/results_page.py --check   # exit 1 when the page differs from the JSON

Each table sits between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->``; the text
around the tables is written by hand. tests/test_results_page.py runs the check.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from results_lib import PAGE, RESULTS, fmt, mean_std, seeds_text


def accuracy(t: dict) -> list[str]:
    out = ["| graph, split | seeds | ladder val | ladder test (answering head) | ladder test with its exit policy (what infer answers) "
           "| best baseline on val | its val | its test | margin of what infer answers |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in t["rows"]:
        lad, base = r["ladder"], r["baseline"]
        margin = lad["exit_test_mean"] - base["test_mean"]
        ties = "".join(f"; tied on val with {name}" for name in base.get("val_ties", []))
        out.append(f"| {r['graph']} `{r['split']}` | {seeds_text(r['seeds'])} | {fmt(lad['val'])} | {mean_std(lad['test_mean'], lad['test_std'])} "
                   f"| {mean_std(lad['exit_test_mean'], lad['exit_test_std'])} | {base['name']} (seeds {seeds_text(base['seeds'])}{ties}) "
                   f"| {fmt(base['val'])} | {mean_std(base['test_mean'], base['test_std'])} | {margin:+.2f} |")
    return out


def early_exit(t: dict) -> list[str]:
    out = ["| graph, split | the run's chosen depth (LLM state) | stored policy | test nodes | rel. accuracy drop "
           "| speed-up against the chosen depth | speed-up against the whole LLM | LLM layers run, of all |",
           "|---|---|---|---|---|---|---|---|"]
    for r in t["rows"]:
        frac = "not measured" if r["llm_layer_fraction"] is None else f"{100 * r['llm_layer_fraction']:.1f} %"
        out.append(f"| {r['graph']} `{r['split']}` | {r['chosen_depth']} | `{r['policy']}` | {r['num_test']} | {fmt(r['rel_drop_pct'])} % "
                   f"| {fmt(r['speedup_vs_chosen_depth'], unit='x')} | {fmt(r['speedup_vs_full_llm'], unit='x')} | {frac} |")
    return out


def cost(t: dict) -> list[str]:
    out = ["| graph | model | seeds | learning rate | test (what infer answers) | trainable params | peak memory (MiB) | of "
           "| total s / seed |", "|---|---|---|---|---|---|---|---|---|"]
    for r in t["rows"]:
        out.append(f"| {r['graph']} | {r['model']} | {seeds_text(r['seeds'])} | {r['lr']} | {mean_std(r['test_mean'], r['test_std'])} "
                   f"| {r['trainable_params']:,} | {r['peak_memory_mib']:,} | {r['peak_of']} "
                   f"| {'≥ ' if r.get('total_s_lower_bound_seeds') else ''}{fmt(r['total_s_per_seed'], 0)} |")
    return out


def storage(t: dict) -> list[str]:
    out = ["| cache | bytes / node | test (what infer answers) | val |", "|---|---|---|---|"]
    for r in t["int8"]:
        out.append(f"| {r['storage']} | {r['bytes_per_node']:,} | {mean_std(r['test_mean'], r['test_std'])} | {fmt(r['val_mean'])} |")
    c = t["caching"]
    out += ["", "| epoch from the cache (s) | epoch with the LLM in the loop (s) | caching speed-up |", "|---|---|---|",
            f"| {fmt(c['epoch_s_cached'])} | {fmt(c['epoch_s_uncached'], 0)} (from {c['uncached_extrapolated_from_batches']} batches) "
            f"| {fmt(c['speedup'], 0, 'x')} |"]
    return out


TABLES = {"accuracy": accuracy, "accuracy_gemma": accuracy, "early_exit": early_exit, "cost": cost, "storage": storage}


def render(page: str) -> str:
    """``page`` with every marked table rendered from its JSON."""
    for name, fn in TABLES.items():
        table = json.loads((RESULTS / f"{name}.json").read_text())
        body = "\n".join(fn(table))
        pattern = re.compile(rf"(<!-- results:{name} -->\n).*?(<!-- /results:{name} -->)", re.S)
        if not pattern.search(page):
            raise SystemExit(f"{PAGE}: no <!-- results:{name} --> ... <!-- /results:{name} --> block")
        page = pattern.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(2), page)
    return page


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    page = PAGE.read_text()
    new = render(page)
    if args.check:
        if new != page:
            sys.exit(f"{PAGE}: tables differ from docs/results/*.json; run python scripts/results_page.py")
        return
    PAGE.write_text(new)
    print(f"wrote {PAGE}")


if __name__ == "__main__":
    main()
