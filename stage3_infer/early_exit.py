"""One target batch climbing the ladder: LLM state i -> rung i -> exit decision, until none is left.

For each rung i (LLM state ``layers[i]``):
  1. keep the subgraphs of the targets still active (:func:`restrict`);
  2. advance the texts those subgraphs still need to state ``layers[i]`` and pool them
     (targets' own texts, and new nodes' texts; known neighbours read the cache);
  3. run the ladder's rung i on that subgraph batch, then the exit policy on its logits.
Targets that exit leave the active set, so their texts stop running through the LLM.

Shapes: n local nodes of the batch's subgraphs, B targets, U texts run, S rungs, H LLM
width, K side width, C classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from stage2_train.sampling import SubgraphBatch
from stage3_infer.llm_runner import TextRunner
from stage2_train.exit_policies import ExitTracker


def restrict(sub: SubgraphBatch, keep_targets: torch.Tensor) -> tuple[SubgraphBatch, torch.Tensor]:
    """The subgraphs of the targets ``keep_targets`` (indices into 0..B-1) with local indices renumbered.

    Returns the smaller batch and ``local`` (n',): the kept local nodes' positions in ``sub``.
    Works for disjoint subgraphs (``ego``/``rwr``) and for one shared graph (``full``).
    """
    graphs = torch.unique(sub.target_graph[keep_targets])  # (G',) sorted
    keep = torch.isin(sub.batch, graphs)  # (n,)
    local = torch.nonzero(keep).flatten()  # (n',)
    new_pos = torch.full((len(sub.batch),), -1, dtype=torch.long)
    new_pos[local] = torch.arange(len(local))
    edge_keep = keep[sub.edge_index[0]]  # an edge never crosses subgraphs: one end decides
    graph_pos = torch.searchsorted(graphs, sub.batch[local])  # renumber subgraphs 0..G'-1
    smaller = SubgraphBatch(
        nodes=sub.nodes[local],
        edge_index=new_pos[sub.edge_index[:, edge_keep]],
        batch=graph_pos,
        targets=new_pos[sub.targets[keep_targets]],
        target_graph=torch.searchsorted(graphs, sub.target_graph[keep_targets]),
    )
    return smaller, local


@dataclass
class BatchSources:
    """Where each local node's LLM states come from.

    fresh_slot: (n,) text slot in the runner for nodes run through the LLM, -1 for cached ones.
    cached: (n, S, H) float32 rungs from the cache (rows of fresh nodes unused), or None if
    every node is fresh.
    """

    fresh_slot: torch.Tensor
    cached: torch.Tensor | None


def climb(
    ladder,
    sub: SubgraphBatch,
    sources: BatchSources,
    runner: TextRunner,
    layers: list[int],
    tracker: ExitTracker,
    rows: torch.Tensor,
    round_states: Callable[[torch.Tensor], torch.Tensor] = lambda h: h,
) -> list[torch.Tensor]:
    """Run one batch to the end; ``rows`` (B,) are the batch's targets in ``tracker``.

    ``round_states`` maps fresh pooled states the way the cache stores them (fp16 rounding),
    so fresh and cached states are the same numbers. Returns the logits (A_i, C) of every rung
    run (for tests and threshold selection).
    """
    num_targets = len(rows)
    z_all = None  # (n, K) latest z of every local node
    all_logits = []
    with torch.no_grad():
        for i, state_index in enumerate(layers):
            active = torch.nonzero(tracker.active[rows]).flatten()  # (A,) positions in this batch
            if len(active) == 0:
                break
            part, local = restrict(sub, active) if len(active) < num_targets else (sub, torch.arange(len(sub.nodes)))
            slots = sources.fresh_slot[local]  # (n',)
            is_fresh = slots >= 0
            needed = torch.zeros(runner.num_texts, dtype=torch.bool)
            needed[slots[is_fresh]] = True
            pooled = runner.advance(state_index, needed)  # (U, H), rows of needed slots filled
            h = torch.empty(len(local), pooled.shape[1])  # (n', H)
            h[is_fresh] = round_states(pooled[slots[is_fresh]])
            if not is_fresh.all():
                h[~is_fresh] = sources.cached[local[~is_fresh], i]
            z_prev = None if z_all is None else z_all[local]
            z, logits = ladder.rung(i, h, z_prev, part)  # (n', K), (A, C)
            if z_all is None:
                z_all = torch.zeros(len(sub.nodes), z.shape[1])
            z_all[local] = z
            tracker.update(i, rows[active], logits)
            all_logits.append(logits)
    return all_logits
