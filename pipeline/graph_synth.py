"""Synthetic large textual graphs for scale work (``pipeline datasets synth``).

A graph of N nodes and C classes, deterministic for a seed, written in the standard
Parquet format (``pipeline/core/graph_format.py``):

- **classes**: mildly imbalanced sizes (Dirichlet(5) proportions), every class present;
- **texts**: class-conditional bags of real words (``pipeline/synth_text.py``);
- **edges**: exactly E = round(N * avg_degree / 2) distinct undirected edges, of which
  exactly round(homophily * E) join two nodes of the same class (so the measured edge
  homophily is the requested one). Degrees are skewed as in citation and product graphs:
  each node gets a power-law weight (Pareto, degree exponent 2.5, capped at sqrt(sum of
  weights) as Chung-Lu graphs need) and edge ends are drawn in proportion to the weights,
  the second end inside or outside the first end's class. Every node first starts one edge
  of its own (preferential-attachment style), so few nodes are isolated;
- **split** column: a random 60/20/20 train/val/test split.

Memory is linear in N and small: texts are generated and written in chunks of
``CHUNK_NODES`` rows (one Parquet row group each); only labels, weights and edges are held
for the whole graph. Measured on 2 shared cores (load average ~10 from other jobs), with
``/usr/bin/time -v``: 100k nodes 23 s, peak RSS 0.42 GB; 1M nodes (40 classes) 5.8 min,
peak RSS 0.47 GB, 553 MB on disk. The full validation read-back (``check``) holds all texts
as Python strings: 1M nodes then took 10.4 min and 6.6 GB, so it is off by default
(``pipeline datasets check OUT`` runs it on demand). Everything is vectorised numpy/Arrow; a chunk's texts depend only on
(seed, chunk number), the graph only on the seed.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core import atomic
from pipeline.core.errors import ConfigErrors, InputError, PipelineError
from pipeline.core.graph_format import EDGES_FILE, META_FILE, NODES_FILE, check_output_folder, move_into_place, read_graph_folder, write_meta
from pipeline.core.options import option, seed_option
from pipeline.core.progress import log, progress
from pipeline.graph_options import flags_file, graph_overwrite_option, out_argument
from pipeline.synth_text import build_text_model, draw_lengths, make_texts, parse_text_words

GENERATOR = "engine-synth/1"  # bump when the same flags would produce other files
CHUNK_NODES = 16_384
DEGREE_EXPONENT = 2.5  # P(degree = k) ~ k^-2.5
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
SPLIT_VALUES = ("train", "val", "test")
MAX_ROUNDS = 30  # edge sampling rounds before giving up (duplicates are redrawn)


MAX_NODES = 10**8  # beyond it the generator's arrays alone outgrow any machine: a typo, refused before allocating

@dataclasses.dataclass
class SynthConfig:
    """Settings of ``pipeline datasets synth``; ``text_words`` is "MIN:MAX" or "MEAN"."""

    out: Path = out_argument()
    nodes: int = option(help="Number of nodes N.", show_default=False)
    classes: int = option(7, "Number of classes C (2..1000).")
    seed: int = seed_option(0, "Seed: the same flags and seed write the same files.")
    homophily: float = option(0.8, "Fraction of edges joining two nodes of the same class (Cora: 0.81).")
    avg_degree: float = option(5.0, "Mean node degree: the graph gets round(N x D / 2) undirected edges.")
    text_words: str = option("150:250", "Words per text: MIN:MAX (uniform) or a mean (lognormal, Cora-like spread).")
    check: bool = option(
        False, "Read the written graph back through the full validation before moving it into place "
        "(holds every text in memory: ~6.6 GB and 2x the time at 1M nodes).", off_flag="--no-check"
    )
    overwrite: bool = graph_overwrite_option()

    def validate(self) -> None:
        """Raise one InputError listing every problem, each naming its flag."""
        errors = ConfigErrors()
        errors.check(10 <= self.nodes <= MAX_NODES, f"--nodes {self.nodes}: must be in 10..{MAX_NODES}")
        errors.check(2 <= self.classes <= 1000, f"--classes {self.classes}: must be in 2..1000")
        errors.check(self.classes <= self.nodes, f"--classes {self.classes}: more classes than --nodes {self.nodes}")
        errors.check(0 <= self.homophily <= 1, f"--homophily {self.homophily}: must be in [0, 1] (fraction of intra-class edges)")
        errors.check(
            0 < self.avg_degree <= (self.nodes - 1) / 2,
            f"--avg-degree {self.avg_degree}: must be > 0 and at most (nodes - 1) / 2 = {(self.nodes - 1) / 2:g}",
        )
        try:
            parse_text_words(self.text_words)
        except ValueError as err:
            errors.add(f"--text-words {self.text_words}: expected MIN:MAX (e.g. 150:250) or a mean (e.g. 160); {err}")
        errors.raise_if_any()

    @property
    def num_edges(self) -> int:
        return int(round(self.nodes * self.avg_degree / 2))


def class_labels(n: int, c: int, rng: np.random.Generator) -> np.ndarray:
    """(N,) class of each node: Dirichlet(5) class proportions, every class at least once."""
    labels = rng.choice(c, size=n, p=rng.dirichlet(np.full(c, 5.0)))
    labels[rng.permutation(n)[:c]] = np.arange(c)
    return labels.astype(np.int64)


def degree_weights(n: int, avg_degree: float, rng: np.random.Generator) -> np.ndarray:
    """(N,) power-law weights (Pareto with shape exponent - 1), capped at sqrt(sum)."""
    w = (1 - rng.random(n)) ** (-1 / (DEGREE_EXPONENT - 1))
    # Chung-Lu: expected degrees d = avg_degree * w / mean(w) need max d^2 <= sum d = N * avg_degree
    return np.minimum(w, np.sqrt(n * avg_degree) * w.mean() / avg_degree)


class _EndSampler:
    """Draws edge ends in proportion to node weights, inside or outside a given class."""

    def __init__(self, labels: np.ndarray, weights: np.ndarray):
        self.order = np.argsort(labels, kind="stable")  # nodes grouped by class
        self.cum = np.concatenate([[0.0], np.cumsum(weights[self.order])])  # (N + 1,)
        bounds = np.searchsorted(labels[self.order], np.arange(labels.max() + 2))
        self.lo, self.hi = self.cum[bounds[:-1]], self.cum[bounds[1:]]  # (C,) class weight ranges
        self.total = self.cum[-1]

    def _at(self, x: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.cum, x, side="right") - 1
        return self.order[np.clip(pos, 0, len(self.order) - 1)]

    def any(self, u: np.ndarray) -> np.ndarray:
        return self._at(u * self.total)

    def inside(self, cls: np.ndarray, u: np.ndarray) -> np.ndarray:
        return self._at(self.lo[cls] + u * (self.hi[cls] - self.lo[cls]))

    def outside(self, cls: np.ndarray, u: np.ndarray) -> np.ndarray:
        x = u * (self.total - (self.hi[cls] - self.lo[cls]))  # the weight line without class cls
        return self._at(np.where(x < self.lo[cls], x, x + (self.hi[cls] - self.lo[cls])))


def sample_edges(labels: np.ndarray, weights: np.ndarray, num_edges: int, homophily: float, rng: np.random.Generator) -> np.ndarray:
    """(2, E) undirected edges (src < dst, sorted), exactly round(homophily * E) intra-class.

    Candidates are drawn in rounds; duplicates and self-loops are dropped and the first
    distinct candidates (in drawing order) fill each quota, so node i's own edge, drawn
    first, is kept unless it repeats another.
    """
    n = len(labels)
    ends = _EndSampler(labels, weights)
    quota = {True: int(round(homophily * num_edges)), False: num_edges - int(round(homophily * num_edges))}
    keys: dict[bool, list[np.ndarray]] = {True: [], False: []}
    kept: dict[bool, np.ndarray] = {True: np.zeros(0, np.int64), False: np.zeros(0, np.int64)}
    for round_ in range(MAX_ROUNDS):
        need = sum(quota[k] - len(kept[k]) for k in (True, False))
        if need == 0:
            break
        if round_ == 0:  # every node starts one edge, then Chung-Lu ends in proportion to weight
            src = np.concatenate([rng.permutation(n)[: min(n, num_edges)], ends.any(rng.random(max(num_edges - n, 0)))])
        else:
            src = ends.any(rng.random(int(need * 1.2) + 64))
        intra = rng.random(len(src)) < homophily
        u = rng.random(len(src))
        dst = np.where(intra, ends.inside(labels[src], u), ends.outside(labels[src], u))
        ok = (src != dst) & ((labels[src] == labels[dst]) == intra)  # float rounding at class borders
        lo, hi = np.minimum(src, dst)[ok], np.maximum(src, dst)[ok]
        for k in (True, False):
            keys[k].append((lo * n + hi)[intra[ok] == k])
            uniq, first = np.unique(np.concatenate(keys[k]), return_index=True)
            kept[k] = uniq[np.argsort(first)][: quota[k]]  # first distinct in drawing order
            keys[k] = [kept[k]]
    missing = sum(quota[k] - len(kept[k]) for k in (True, False))
    if missing:
        raise InputError(
            f"--avg-degree: could not place {num_edges} distinct edges ({quota[True]} inside classes) among {n} nodes; "
            "lower --avg-degree or --homophily, or raise --nodes or lower --classes"
        )
    both = np.sort(np.concatenate([kept[True], kept[False]]))
    return np.stack([both // n, both % n])


def split_codes(n: int, rng: np.random.Generator) -> np.ndarray:
    """(N,) 0/1/2 = train/val/test, a random 60/20/20 split."""
    codes = np.empty(n, dtype=np.int32)
    n_train, n_val = int(round(SPLIT_FRACTIONS[0] * n)), int(round(SPLIT_FRACTIONS[1] * n))
    perm = rng.permutation(n)
    codes[perm[:n_train]], codes[perm[n_train : n_train + n_val]], codes[perm[n_train + n_val :]] = 0, 1, 2
    return codes


def _as_strings(codes: np.ndarray, values: list[str]) -> pa.Array:
    """Integer codes -> a plain string column (dictionary decoding in Arrow, no Python loop)."""
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(values)).cast(pa.string())


def run_synth(config: SynthConfig) -> None:
    """``pipeline datasets synth``: the graph, with the flags that made it."""
    synthesize(config, extra_files=flags_file("datasets_synth", config))


def synthesize(config: SynthConfig, extra_files: dict[str, Callable[[Path], None]] | None = None) -> dict:
    """Write the synthetic graph folder ``config.out`` atomically; returns its summary."""
    config.validate()
    out = Path(config.out)
    check_output_folder(out, config.overwrite)
    start = time.perf_counter()
    n, words = config.nodes, parse_text_words(config.text_words)
    rng = np.random.default_rng([config.seed, 0])
    labels = class_labels(n, config.classes, rng)
    edges = sample_edges(labels, degree_weights(n, config.avg_degree, rng), config.num_edges, config.homophily, rng)
    split = split_codes(n, rng)
    model = build_text_model(config.classes, config.seed)
    degree = np.bincount(edges.ravel(), minlength=n)
    summary = {
        "num_nodes": n,
        "num_undirected_edges": int(edges.shape[1]),
        "num_classes": config.classes,
        "edge_homophily": round(float((labels[edges[0]] == labels[edges[1]]).mean()), 6),
        "degree": {"mean": round(float(degree.mean()), 3), "max": int(degree.max()), "isolated": int((degree == 0).sum())},
    }

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic.temp_sibling(out)
    try:
        tmp.mkdir()
        schema = pa.schema([("node_id", pa.int64()), ("text", pa.string()), ("label", pa.string()), ("split", pa.string())])
        total_words = 0
        with pq.ParquetWriter(tmp / NODES_FILE, schema, compression="zstd") as writer, progress(n, "synth", unit="nodes") as bar:
            for chunk, lo in enumerate(range(0, n, CHUNK_NODES)):
                hi = min(lo + CHUNK_NODES, n)
                chunk_rng = np.random.default_rng([config.seed, 1, chunk])  # texts of a chunk: (seed, chunk) only
                lengths = draw_lengths(hi - lo, words, chunk_rng)
                total_words += int(lengths.sum())
                texts = make_texts(model, labels[lo:hi], lengths, chunk_rng)
                columns = [pa.array(np.arange(lo, hi, dtype=np.int64)), texts,
                           _as_strings(labels[lo:hi], model.class_names), _as_strings(split[lo:hi], list(SPLIT_VALUES))]
                writer.write_table(pa.Table.from_arrays(columns, schema=schema))
                bar.advance(hi - lo)
        pq.write_table(pa.table({"src": edges[0], "dst": edges[1]}), tmp / EDGES_FILE, compression="zstd")
        summary["text_words_mean"] = round(total_words / n, 2)
        meta = {
            **{k: v for k, v in summary.items() if k not in ("degree", "text_words_mean")},
            "label_names": model.class_names,
            "synth": {"generator": GENERATOR, **{k: v for k, v in dataclasses.asdict(config).items() if k not in ("out", "check", "overwrite")}},
        }
        write_meta(tmp / META_FILE, meta)
        for fname, write in (extra_files or {}).items():
            write(tmp / fname)
        # cheap read-back of the Parquet footers; the full validation (``check``) holds every
        # text in memory: at 1M nodes it took 14x the memory (6.6 GB vs 0.47 GB) and 2x the time
        if (pq.read_metadata(tmp / NODES_FILE).num_rows, pq.read_metadata(tmp / EDGES_FILE).num_rows) != (n, edges.shape[1]):
            raise PipelineError(f"{out}: the written files do not hold {n} nodes and {edges.shape[1]} edges (internal error)")
        if config.check:  # the full reader's validation, as for every other written graph
            summary["fingerprint"] = read_graph_folder(tmp, name=out.name, source=str(tmp)).fingerprint
        move_into_place(tmp, out, config.overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary["seconds"] = round(time.perf_counter() - start, 2)
    log(
        f"synth: {n} nodes, {summary['num_undirected_edges']} edges (homophily {summary['edge_homophily']:.3f}, "
        f"degree mean {summary['degree']['mean']}, max {summary['degree']['max']}, {summary['degree']['isolated']} isolated), "
        f"{config.classes} classes, {summary['text_words_mean']:.0f} words a text, in {summary['seconds']:.1f}s -> {out}"
    )
    return summary
