"""Feature standardisation of the LLM states with training-set statistics (``--standardize``).

SmolLM2's pooled states have a few dimensions hundreds of times larger than the rest, and
their scale grows with depth; a per-state z-score lets every rung's projection start from
comparable inputs. The statistics are the mean and (population) standard deviation of each
state's H dimensions over the **training nodes only** (validation and test rows never enter
them), computed once per seed before training. They live in the model as buffers, so they are
saved with its weights (safetensors) and applied wherever the model reads states: training,
evaluation, and ``pipeline infer`` on fresh LLM states.

Shapes: S states (rungs), H LLM width, n nodes.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

MIN_STD = 1e-6  # a dimension constant over the training nodes is centred, not blown up
STATS_BLOCK = 4096  # training rows read per step (bounded memory on large caches)


class StateScaler(nn.Module):
    """``(h - mean[i]) / std[i]`` for state i; identity until :meth:`set_stats` is called.

    mean, std: (S, H) buffers (float32), part of the state dict.
    """

    def __init__(self, num_states: int, hidden_size: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_states, hidden_size))
        self.register_buffer("std", torch.ones(num_states, hidden_size))

    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std.clamp(min=MIN_STD))

    def keep_states(self, count: int) -> None:
        """Keep the statistics of the first ``count`` states (a ladder cut to its chosen depth)."""
        self.mean, self.std = self.mean[:count].clone(), self.std[:count].clone()

    def forward(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """h: (n, H) state i -> (n, H) standardised."""
        return (h - self.mean[i]) / self.std[i]


def training_stats(features: Callable, train_nodes: np.ndarray, group=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population std (S, H) of ``features(train_nodes)`` (n, S, H), in float64 sums.

    ``group``: the ranks of a ``torchrun`` job, each passing its share of the training nodes;
    the sums are added over ranks, so every rank gets the statistics of the whole training set.
    """
    total, sums, squares = 0, None, None
    for a in range(0, len(train_nodes), STATS_BLOCK):
        x = features(torch.as_tensor(np.asarray(train_nodes[a : a + STATS_BLOCK]), dtype=torch.long)).double()  # (b, S, H)
        sums = x.sum(0) if sums is None else sums + x.sum(0)
        squares = (x * x).sum(0) if squares is None else squares + (x * x).sum(0)
        total += len(x)
    if group is not None and group.world_size > 1:
        shape = sums.shape
        flat = group.sum(sums.flatten().tolist() + squares.flatten().tolist() + [total])
        n = sums.numel()
        sums = torch.tensor(flat[:n], dtype=torch.float64).view(shape)
        squares = torch.tensor(flat[n : 2 * n], dtype=torch.float64).view(shape)
        total = int(flat[-1])
    mean = sums / total
    var = (squares / total - mean * mean).clamp(min=0.0)
    return mean.float(), var.sqrt().float()
