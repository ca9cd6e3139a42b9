"""Run a set of texts through the frozen LLM only as deep as still needed, counting layers.

The texts of one target batch are tokenized once, sorted by token count and cut into
micro-batches under a token budget, B x T <= ``batch_tokens`` (and at most ``max_texts``
texts when given), exactly as ``pipeline encode`` batches, on GPU and CPU alike. ``advance(to_state, needed)``
drops the texts no longer needed from every micro-batch (``LayerStepper.select``; the needed
set only shrinks, because targets only exit), runs the rest up to LLM state ``to_state``
and returns their pooled vectors. Every (text, transformer layer) pair run is counted in
``layer_evals``: the measure of work that early exit saves.

Shapes: U texts, B texts in a micro-batch, H LLM width.
"""

from __future__ import annotations

import numpy as np
import torch

from stage1_encode.stepping import LayerStepper, StepState


class TextRunner:
    """Steps U texts together; text slot u is ``texts[u]``."""

    def __init__(self, stepper: LayerStepper, texts: list[str], batch_tokens: int, max_length: int, pooling: str,
                 max_texts: int | None = None) -> None:
        from stage1_encode.run import make_batches
        from stage1_encode.text_clip import token_ids

        self.stepper, self.pooling = stepper, pooling
        self.num_texts = len(texts)
        self.layer_evals = 0
        ids = token_ids(stepper.loaded.tokenizer, list(texts), max_length)
        self._groups: list[tuple[torch.Tensor, StepState | None]] = []
        for batch in make_batches(np.asarray([len(row) for row in ids], dtype=np.int64), batch_tokens):
            for a in range(0, len(batch), max_texts or len(batch)):
                slots = torch.as_tensor(batch[a : a + (max_texts or len(batch))], dtype=torch.long)  # (B,) text slots
                tokens = stepper.pad([ids[u] for u in slots.tolist()])
                self._groups.append((slots, stepper.start(tokens)))  # state 0: embeddings, no layer run
        self.alive = torch.ones(len(texts), dtype=torch.bool)  # (U,) still being stepped

    def advance(self, to_state: int, needed: torch.Tensor) -> torch.Tensor:
        """Pooled LLM state ``to_state`` of the ``needed`` slots (bool (U,)) -> (U, H), zero elsewhere.

        A slot dropped once (not needed) can never come back: its hidden states are gone.
        """
        if (needed & ~self.alive).any():
            raise ValueError("a text that was dropped is needed again")
        self.alive &= needed
        out = torch.zeros(self.num_texts, self.stepper.hidden_size)  # (U, H)
        kept = []
        for slots, state in self._groups:
            keep = self.alive[slots]  # (B,) of this micro-batch
            if not keep.any():
                continue  # the whole micro-batch is done: freed below
            if not keep.all():
                state = self.stepper.select(state, torch.nonzero(keep).flatten())
                slots = slots[keep]
            self.layer_evals += len(slots) * (to_state - state.k)  # one count per text per layer run
            self.stepper.advance(state, to_state)
            out[slots] = self.stepper.pool(state, self.pooling).float().cpu()  # (B, H)
            kept.append((slots, state))
        self._groups = kept
        return out
