"""Texts cut to what ``max_length`` tokens can read, before they are tokenized.

A tokenizer reads the whole text even when truncation keeps only its first ``max_length``
tokens: on 200-word texts at ``--max-length 32`` tokenizing was most of the encode time
(85 texts/s against 475 for 32-word texts, docs/scale.md). So each text longer than
``CHARS_PER_TOKEN x max_length`` characters is cut at its last whitespace before that bound
(trailing whitespace dropped), and the cut is kept only when the cut text still fills all
``max_length`` tokens; otherwise (dense text, long words, no whitespace to cut at in the
bound's second half) the whole text is tokenized.

Why the ids are the same: the tokenizers we load split on whitespace before their subword
model (byte-level BPE, WordPiece, SentencePiece with whitespace-split pieces), so the tokens
of the words before the cut do not depend on what follows it. When those words alone yield
at least ``max_length`` tokens, truncation keeps exactly the tokens the whole text would
give. ``tests/test_encode_stepping.py`` checks ids equal to whole-text tokenization for the
shipped models on real and adversarial texts.
"""

from __future__ import annotations

CHARS_PER_TOKEN = 12  # English averages ~4.5 characters a token; 12 leaves room for long words and markup
CUT_AT = " \n\t\r"  # ASCII whitespace only: every pre-tokenizer splits there (not always at NBSP and the like)


def cut_text(text: str, bound: int) -> str:
    """``text`` cut at its last ASCII whitespace before ``bound`` characters, or whole when
    not longer than ``bound`` or without such whitespace in ``[bound/2, bound)``."""
    if len(text) <= bound:
        return text
    head = text[:bound]
    j = max(head.rfind(c) for c in CUT_AT)
    if j < bound // 2:
        return text
    return head[:j].rstrip()


def token_ids(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each text truncated to ``max_length`` (special tokens included), as
    ``tokenizer(texts, truncation=True, max_length=max_length)`` gives them, reading each
    long text only as far as its first ``max_length`` tokens need."""
    if not texts:
        return []  # tokenizers fail on an empty batch
    bound = CHARS_PER_TOKEN * max_length
    clipped = [cut_text(t, bound) for t in texts]
    ids = tokenizer(clipped, truncation=True, max_length=max_length)["input_ids"]
    # a cut text that no longer fills max_length tokens might have lost some: tokenize it whole
    redo = [i for i, (a, b) in enumerate(zip(clipped, texts)) if len(a) < len(b) and len(ids[i]) < max_length]
    if redo:
        for i, row in zip(redo, tokenizer([texts[i] for i in redo], truncation=True, max_length=max_length)["input_ids"]):
            ids[i] = row
    return list(ids)
