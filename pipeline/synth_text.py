"""Class-conditional texts from a real vocabulary, for synthetic graphs (``pipeline datasets synth``).

The vocabulary and its word frequencies come from the built-in Cora and CiteSeer texts
(13 real classes, about 5.9k abstracts): every word seen at least twice, written in its
most common spelling. A synthetic text of class c is a bag of words with sentence breaks:

- with probability ``TOPIC_SHARE`` a word is drawn from class c's topic distribution,
  otherwise from the background (the real corpus frequencies: "the", "of", "learning"...);
- class c's topic is half a real class's *excess* frequencies (max(P_class - P_all, 0):
  what makes e.g. Genetic_Algorithms abstracts differ, without stop words) and half ~60
  keywords owned by c (mid-frequency words, weighted by their real frequency). The real
  classes alone give at most 13 topics; the keywords keep any number of classes apart.

Sentences end after each word with probability 1/18 (and at a text's end), with a capital
letter after a break and a period before it. Everything is vectorised: each distribution is
a lookup table of word indices (each word filling slots in proportion to its probability,
rounded to 1 / table size), so drawing a word is one random integer and one gather (3x
faster than ``searchsorted`` on a cumulative distribution); texts are joined by Arrow
(``binary_join``).
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SOURCE_DATASETS = ("cora", "citeseer")
MIN_COUNT = 2  # words seen once are mostly typos and split hyphenations
TOPIC_SHARE = 0.2  # fraction of a text's words drawn from its class's topic
KEYWORDS_PER_CLASS = 60
KEYWORD_SHARE = 0.5  # of a class's topic mass, the rest is its real class's excess words
COMMON_WORDS = 200  # the most frequent words are never keywords
SENTENCE_END_P = 1 / 18  # mean sentence length ~18 words, like abstracts
LOGNORMAL_SIGMA = 0.45  # spread of text lengths for a "--text-words MEAN" (Cora: ~0.44)
BACKGROUND_BITS = 22  # background table: 4M slots, so even words seen twice get ~7 slots
CLASS_BITS = 16  # topic tables: 64k slots a class (words under 1/64k of a topic drop out)
_WORD = re.compile(r"[A-Za-z]+(?:[-'][A-Za-z]+)*")


@dataclass(frozen=True)
class TextModel:
    """Word distributions of C synthetic classes over a V-word real vocabulary.

    ``tokens``: (4V,) the words in 4 spellings: plain, Capitalised, plain., Capitalised.
    ``background``: (2^BACKGROUND_BITS,) word index per slot, real corpus frequencies.
    ``topics``: (C, 2^CLASS_BITS) word index per slot of each class's topic.
    ``class_names``: (C,) names built from each class's real source class.
    """

    tokens: pa.Array
    background: np.ndarray
    topics: np.ndarray
    class_names: list[str]

    @property
    def vocab_size(self) -> int:
        return len(self.tokens) // 4


@functools.lru_cache(maxsize=1)
def real_corpus() -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """(vocabulary (V,), counts per real class (K, V), total counts (V,), real class names (K,))."""
    from pipeline.core.graph import load_graph

    docs, classes, names = [], [], []
    for name in SOURCE_DATASETS:
        graph = load_graph(name)
        for i, text in enumerate(graph.texts):
            if graph.labels[i] >= 0:
                docs.append(_WORD.findall(text))
                classes.append(len(names) + int(graph.labels[i]))
        names += list(graph.label_names)
    spellings = Counter(w for doc in docs for w in doc)
    totals: Counter = Counter()
    best: dict[str, tuple[int, str]] = {}
    for word, count in spellings.items():
        key = word.lower()
        totals[key] += count
        if count > best.get(key, (0, ""))[0]:
            best[key] = (count, word)
    # most frequent first, ties by word: a stable order makes the vocabulary reproducible
    keys = sorted((k for k, c in totals.items() if c >= MIN_COUNT), key=lambda k: (-totals[k], k))
    index = {k: i for i, k in enumerate(keys)}
    v = len(keys)
    flat = [k * v + index[w.lower()] for doc, k in zip(docs, classes) for w in doc if w.lower() in index]
    per_class = np.bincount(np.asarray(flat, dtype=np.int64), minlength=len(names) * v).reshape(len(names), v)
    per_class = per_class.astype(np.float64)
    return [best[k][1] for k in keys], per_class, per_class.sum(axis=0), names


def lookup_table(p: np.ndarray, bits: int) -> np.ndarray:
    """(2^bits,) uint16 word indices, word i in round(p[i] * 2^bits) slots (largest remainders)."""
    size = 1 << bits
    exact = p / p.sum() * size
    counts = np.floor(exact).astype(np.int64)
    short = size - int(counts.sum())
    counts[np.argsort(counts - exact, kind="stable")[:short]] += 1  # largest fractional parts first
    return np.repeat(np.arange(len(p), dtype=np.uint16), counts)


def build_text_model(num_classes: int, seed: int) -> TextModel:
    """Topic distributions of ``num_classes`` classes; keywords drawn with ``seed``."""
    vocab, per_class, total, real_names = real_corpus()
    v, k = len(vocab), len(real_names)
    background = total / total.sum()  # (V,)
    excess = np.maximum(per_class / per_class.sum(axis=1, keepdims=True) - background, 0)  # (K, V)
    excess /= excess.sum(axis=1, keepdims=True)

    assert v < 1 << 16, "word indices are stored as uint16"
    rng = np.random.default_rng([seed, 2])
    candidates = rng.permutation(np.arange(COMMON_WORDS, v))  # keywords: disjoint while they last
    topics, names, uses = np.empty((num_classes, 1 << CLASS_BITS), dtype=np.uint16), [], Counter()
    for c in range(num_classes):
        real = c % k
        kw = candidates[np.arange(c * KEYWORDS_PER_CLASS, (c + 1) * KEYWORDS_PER_CLASS) % len(candidates)]
        keyword_p = np.zeros(v)
        keyword_p[kw] = background[kw] / background[kw].sum()
        topics[c] = lookup_table((1 - KEYWORD_SHARE) * excess[real] + KEYWORD_SHARE * keyword_p, CLASS_BITS)
        uses[real] += 1
        names.append(real_names[real] if uses[real] == 1 else f"{real_names[real]}_{uses[real]}")
    capital = [w[:1].upper() + w[1:] for w in vocab]
    tokens = pa.array(vocab + capital + [w + "." for w in vocab] + [w + "." for w in capital], pa.string())
    return TextModel(tokens, lookup_table(background, BACKGROUND_BITS), topics, names)


def parse_text_words(spec: str) -> tuple[int, int] | float:
    """``"MIN:MAX"`` -> (min, max) uniform word counts; ``"MEAN"`` -> lognormal mean. ValueError if bad."""
    if ":" in spec:
        lo, hi = (int(x) for x in spec.split(":", 1))
        if not 1 <= lo <= hi:
            raise ValueError("need 1 <= MIN <= MAX")
        return lo, hi
    mean = float(spec)
    if not mean >= 1:
        raise ValueError("need a mean of at least 1 word")
    return mean


def draw_lengths(n: int, spec: tuple[int, int] | float, rng: np.random.Generator) -> np.ndarray:
    """(n,) words per text: uniform in [MIN, MAX], or lognormal around MEAN (at least 1)."""
    if isinstance(spec, tuple):
        return rng.integers(spec[0], spec[1] + 1, size=n)
    mu = np.log(spec) - LOGNORMAL_SIGMA**2 / 2  # so that the mean is MEAN
    return np.maximum(np.rint(rng.lognormal(mu, LOGNORMAL_SIGMA, size=n)), 1).astype(np.int64)


def make_texts(model: TextModel, labels: np.ndarray, lengths: np.ndarray, rng: np.random.Generator) -> pa.Array:
    """(n,) texts for nodes of classes ``labels`` (n,) with ``lengths`` (n,) words each.

    Shapes: W = lengths.sum() word slots, flattened text after text.
    """
    v = model.vocab_size
    total = int(lengths.sum())
    owner = np.repeat(np.arange(len(labels), dtype=np.int32), lengths)  # (W,) text of each word slot
    # one 32-bit draw a slot: high bits pick a background word, low 10 bits the topic coin
    r = rng.integers(0, 1 << 32, size=total, dtype=np.uint32)
    words = model.background[r >> (32 - BACKGROUND_BITS)].astype(np.int64)  # (W,)
    topic = (r & 1023) < round(TOPIC_SHARE * 1024)
    # a second draw: high bits pick a topic word, low 16 bits the sentence-end coin
    r = rng.integers(0, 1 << 32, size=total, dtype=np.uint32)
    words[topic] = model.topics[labels[owner[topic]], r[topic] >> (32 - CLASS_BITS)]
    end = (r & 0xFFFF) < round(SENTENCE_END_P * 0x10000)

    offsets = np.zeros(len(labels) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    end[offsets[1:] - 1] = True  # every text ends a sentence
    start = np.empty(total, dtype=bool)
    start[0] = True
    start[1:] = end[:-1]  # a word after a break (or a text's first word) is capitalised
    spelled = model.tokens.take(pa.array(words + v * (start + 2 * end)))  # (W,) strings
    lists = pa.LargeListArray.from_arrays(pa.array(offsets), spelled)  # (n,) lists of words
    return pc.binary_join(lists, " ").cast(pa.string())
