"""``NodeFeatures``: where training reads the pooled LLM states of a batch's nodes.

Four sources implement it: the cache in memory or by rows (``data.CachedFeatures``), the
LLM itself (``data.LiveFeatures``, ``--no-cache``), a torchrun rank's share of the cache
(``distributed.ShardFeatures``) and the cache out of core (``out_of_core.OutOfCoreFeatures``).
The training loop depends on this protocol only.

Shapes: n nodes of a batch of subgraphs, S rungs, H LLM width.
"""

from __future__ import annotations

from typing import Iterator, Protocol

import numpy as np
import torch


class NodeFeatures(Protocol):
    """``features(nodes (n,) long) -> (n, S, H)`` float32 states of those graph nodes.

    ``orders_batches``: True when the source chooses each epoch's batch order itself (out of
    core: chunk-grouped batches, micro-batches within a memory bound, read-ahead) through
    :meth:`epoch` and cuts evaluation batches with :meth:`pieces`; the loop then asks it for
    the epoch's micro-batches instead of cutting batches itself.
    """

    orders_batches: bool

    def __call__(self, nodes: torch.Tensor) -> torch.Tensor: ...


class BatchOrderingFeatures(NodeFeatures, Protocol):
    """A :class:`NodeFeatures` with ``orders_batches = True``."""

    def epoch(self, sampler, nodes: np.ndarray, size: int, gen: torch.Generator,
              max_batches: int | None = None) -> Iterator:
        """The epoch's micro-batches (``step_memory.MicroBatch``) in the order it chooses."""

    def pieces(self, sub) -> list:
        """An evaluation subgraph batch cut into pieces that fit the step memory bound."""
