"""What one training step holds in memory, and batches cut into micro-batches that fit a bound.

Out of core, ``--memory-budget`` bounds the whole training working set, not only the cached
rows: one batch of ego subgraphs around hub nodes can hold thousands of nodes, and a step's
float32 states and activations (about 28 KB a node for 5 rungs of H = 256, K = 128) then
outweigh the chunk cache. So a batch is cut into **micro-batches** of whole target
subgraphs whose estimated step memory fits a per-step share of the budget; their gradients
accumulate (each loss scaled by its share of the batch's targets) and the optimiser steps
once per batch: the same update as the whole batch (up to float summation order and
dropout's draws).

The estimate, linear in the micro-batch's n nodes and e edges (S rungs, H LLM width, K side
width, L convolutions per rung)::

    node_bytes = S * (8 H + 4 K (5 + 4 L))   # states: fp16 rows, a gathered copy, float32; activations
    edge_bytes = S * 4 K * c_gnn * L          # messages: c = 0.25 sage, 0.5 gcn, 1.75 gat

fitted to the peak RSS of one forward + backward (glibc with a fixed 64 KiB mmap threshold,
so freed buffers leave the RSS) over n = 500..4000 and e = n..30 n: sage L = 1 measured
S x (1.07 x 4H + 9.0 x 4K) a node over H in {64, 256, 576, 1024} and K in {64, 128, 256};
L = 2 measured 13.4 x 4K; edges 0.20 (sage), 0.46 (gcn), 1.67 (gat) x S x 4K. The 8 H term
also covers the read-ahead thread's transient copies while it prepares the next piece.

Shapes: B targets, G = B subgraphs, n nodes and e edges in a batch of subgraphs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from pipeline.core.errors import InputError
from pipeline.core.parsers import format_size
from stage2_train.sampling import SubgraphBatch

EDGE_FACTOR = {"sage": 0.25, "gcn": 0.5, "gat": 1.75}  # messages per edge, in units of S x 4K bytes per layer


@dataclass(frozen=True)
class StepCost:
    """Estimated bytes one training step holds for a batch of ``n`` nodes and ``e`` edges."""

    node_bytes: int
    edge_bytes: int
    state_bytes: int = 0  # of node_bytes: the states (fp16 rows, copies, float32), all a prepared micro-batch holds

    def __call__(self, nodes, edges):
        return nodes * self.node_bytes + edges * self.edge_bytes


def step_cost(spec: dict) -> StepCost:
    """The estimate for a model spec (:func:`stage2_train.run.model_spec`)."""
    s, h, k = spec["num_rungs"], spec["in_channels"], spec["hidden_channels"]
    layers = spec["num_layers"] or 1
    edge = EDGE_FACTOR.get(spec.get("gnn", "sage"), max(EDGE_FACTOR.values())) * layers
    return StepCost(node_bytes=s * (8 * h + 4 * k * (5 + 4 * layers)), edge_bytes=math.ceil(s * 4 * k * edge), state_bytes=s * 8 * h)


def step_limit(share: int, cost: StepCost, readahead: int) -> int:
    """The step memory a micro-batch may use when ``share`` bytes hold the one being trained
    (its whole estimate), the one being read and ``readahead`` waiting ones (their states only)."""
    states = cost.state_bytes / cost.node_bytes
    return int(share / (1 + (readahead + 1) * states))


def subgraph_costs(sub: SubgraphBatch, cost: StepCost) -> np.ndarray:
    """(G,) estimated step bytes of each subgraph of ``sub`` alone."""
    g = len(sub.target_graph)
    nodes = torch.bincount(sub.batch, minlength=g)
    edges = torch.bincount(sub.batch[sub.edge_index[0]], minlength=g) if sub.edge_index.numel() else torch.zeros(g, dtype=torch.long)
    return cost(nodes.numpy().astype(np.int64), edges.numpy().astype(np.int64))


@dataclass
class MicroBatch:
    """Part of a training batch: whole subgraphs of some of its targets and their states.

    targets: (b,) global target nodes; sub: their subgraphs; states: (n, S, H) float32;
    share: b / B, the weight of this part's mean loss in the batch's; last: the optimiser
    steps after this part (the batch's last).
    """

    targets: np.ndarray
    sub: SubgraphBatch
    states: torch.Tensor
    share: float = 1.0
    last: bool = True


class StepTooLarge(InputError):
    """One target's subgraph alone needs more step memory than the budget allows."""


def split_batch(sub: SubgraphBatch, cost: StepCost, limit: int, prefix: str = "",
                advice: Callable[[int], str] = lambda need: "") -> list[tuple[int, int]]:
    """Consecutive target ranges ``[(g0, g1), ...]`` of ``sub`` whose estimated step memory
    fits ``limit`` bytes (greedy, in target order). A subgraph that alone exceeds ``limit``
    raises :class:`StepTooLarge` naming its target node, between ``prefix`` and ``advice(its bytes)``."""
    if len(sub.target_graph) and int(sub.target_graph.max()) == 0 and len(sub.target_graph) > 1:
        whole = int(cost(len(sub.nodes), sub.edge_index.shape[1]))  # ``full`` sampler: one graph shared by every target
        if whole > limit:
            raise StepTooLarge(f"--sampler full: a step over the whole graph ({len(sub.nodes)} nodes) needs about "
                               f"{format_size(whole)}, more than the {format_size(limit)} a step may use out of core; "
                               "train out of core with --sampler ego (or rwr), or give a --memory-budget the cache's rungs fit in")
        return [(0, len(sub.target_graph))]
    costs = subgraph_costs(sub, cost)
    over = np.flatnonzero(costs > limit)
    if len(over):
        g = int(over[np.argmax(costs[over])])
        node = int(sub.nodes[sub.targets[g]])
        size = int((sub.batch == g).sum())
        raise StepTooLarge(f"{prefix}the subgraph of target node {node} ({size} nodes) needs about {format_size(int(costs[g]))} "
                           f"for one training step, more than the {format_size(limit)} a step may use{advice(int(costs[g]))}")
    ranges, start, used = [], 0, 0
    for g, c in enumerate(costs.tolist()):
        if used + c > limit:
            ranges.append((start, g))
            start, used = g, 0
        used += c
    ranges.append((start, len(costs)))
    return ranges


def select_graphs(sub: SubgraphBatch, g0: int, g1: int) -> SubgraphBatch:
    """Subgraphs ``[g0, g1)`` of ``sub`` (and their targets) as a batch of their own.

    Relies on the sampler's layout: nodes stored subgraph by subgraph, edges sorted by source.
    """
    node_lo, node_hi = (int(x) for x in torch.searchsorted(sub.batch, torch.tensor([g0, g1])))
    edge_lo, edge_hi = (int(x) for x in torch.searchsorted(sub.edge_index[0].contiguous(), torch.tensor([node_lo, node_hi])))
    return SubgraphBatch(
        nodes=sub.nodes[node_lo:node_hi],
        edge_index=sub.edge_index[:, edge_lo:edge_hi] - node_lo,
        batch=sub.batch[node_lo:node_hi] - g0,
        targets=sub.targets[g0:g1] - node_lo,
        target_graph=sub.target_graph[g0:g1] - g0,
    )
