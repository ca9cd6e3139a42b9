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


def open_run_features(config, data, group, spec: dict, sampler, targets: np.ndarray) -> tuple[NodeFeatures, dict]:
    """The features a training run of ``config`` (a CacheTrainConfig) reads, and their mode for the
    run's record: the live LLM (``--no-cache``), this torchrun rank's share of the cache (filled per
    seed by ``distributed.load_share``), or the cache in memory or out of core within
    ``--memory-budget`` (``out_of_core.open_features`` chooses). ``targets`` (every split's nodes)
    lets out of core refuse, before training, a hub whose step alone exceeds the budget."""
    import time

    from pipeline.core.progress import log, warn

    if not config.reads_cache:
        from stage1_encode.precision import cache_compute_dtype
        from stage2_train.data import LiveFeatures

        dtype = cache_compute_dtype(data.manifest, config.dtype, config.allow_dtype_mismatch, str(config.cache))
        warn("--no-cache: the frozen LLM encodes every batch inside the loop (slow; the baseline of the caching claim)")
        return LiveFeatures(data, config.device, dtype), {"mode": "live-llm", "compute_dtype": dtype}
    if group is not None:
        from stage2_train.distributed import ShardFeatures

        return ShardFeatures(data), {"mode": "rank-share"}  # --memory-budget is refused under torchrun (run)
    from stage2_train.out_of_core import describe_mode, open_features
    from stage2_train.step_memory import step_cost

    t0 = time.perf_counter()
    features, mode = open_features(data, config.memory_budget, cost=step_cost(spec))
    if mode["mode"] == "out-of-core":
        features.check(sampler, targets)
    log(describe_mode(mode, len(data.layers), data.graph.num_nodes, time.perf_counter() - t0))
    return features, mode
