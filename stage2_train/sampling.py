"""Subgraph sampling for the ladder: one small subgraph per target node, batched.

Pure torch/numpy (CSR slicing), because ``pyg-lib``/``torch-sparse`` have no wheels for
this torch. Modes:

- ``ego``: the target and its neighbours up to ``hops`` hops (1: the reference) with the
  induced edges; ``fanout`` caps the neighbours kept per node and hop (a random subset,
  seeded); None or 0 keeps them all.
- ``rwr``: nodes visited by ``num_walks`` random walks of ``walk_length`` steps with restart
  probability ``restart_p`` from the target, with the induced edges.
- ``full``: the whole graph as one subgraph shared by every target (small graphs, and the
  full-batch GNN baselines).

Training passes a seeded ``torch.Generator``: fresh draws every epoch. Evaluation and
``pipeline infer`` pass none: every random choice is then a hash of the target, the node it is
made at and the candidate (:func:`keyed`), never a position in a random stream, so a target's
subgraph is a function of the graph and the target alone, whatever batch, order, subset or
shard it is drawn in. An isolated target's subgraph is the target alone (no edge).

Shapes: N graph nodes, B targets, n nodes and e edges in the batch of subgraphs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.core.options import require_choice
from stage2_train.config import SAMPLERS
EVAL_SEED = 0

# splitmix64 (Steele, Lea & Flood 2014) on int64 tensors; constants as signed int64
_GOLDEN, _MIX1, _MIX2 = 0x9E3779B97F4A7C15 - (1 << 64), 0xBF58476D1CE4E5B9 - (1 << 64), 0x94D049BB133111EB - (1 << 64)


def _shr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 ``z`` (torch's ``>>`` is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def splitmix64(z: torch.Tensor) -> torch.Tensor:
    """The splitmix64 finaliser of int64 ``z`` (wrapping arithmetic, bits as uint64's)."""
    z = z + _GOLDEN
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def keyed(*parts: torch.Tensor | int) -> torch.Tensor:
    """An int64 hash of equal-length int64 tensors (or ints), combined in order: the random
    draw of the evaluation sampler, one per row, that depends on nothing but its parts."""
    h = splitmix64(torch.as_tensor(EVAL_SEED, dtype=torch.long))
    for p in parts:
        h = splitmix64(h ^ torch.as_tensor(p, dtype=torch.long))
    return h


def keyed_uniform(*parts: torch.Tensor | int) -> torch.Tensor:
    """Floats in [0, 1) from :func:`keyed` (the top 53 bits)."""
    return _shr(keyed(*parts), 11).double() / float(1 << 53)


@dataclass
class SubgraphBatch:
    """B disjoint subgraphs (or one shared subgraph in ``full`` mode).

    nodes: (n,) global node index of each local node.
    edge_index: (2, e) local indices into ``nodes``; symmetric, no self-loops.
    batch: (n,) subgraph of each local node, 0..G-1.
    targets: (B,) local position of each target node.
    target_graph: (B,) subgraph of each target (``arange(B)``, or zeros in ``full`` mode).
    """

    nodes: torch.Tensor
    edge_index: torch.Tensor
    batch: torch.Tensor
    targets: torch.Tensor
    target_graph: torch.Tensor

    @property
    def num_graphs(self) -> int:
        return int(self.batch.max()) + 1 if self.batch.numel() else 0

    def to(self, device: torch.device | str) -> "SubgraphBatch":
        return SubgraphBatch(*(t.to(device) for t in (self.nodes, self.edge_index, self.batch, self.targets, self.target_graph)))


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (sampling randomness never touches global state)."""
    return torch.Generator().manual_seed(int(seed))


# Candidate edges (CSR edges leaving a subgraph's nodes) examined at once when inducing edges:
# a batch of 2-hop subgraphs around hubs has millions, and seven int64 arrays of them would
# outweigh an out-of-core step (--memory-budget); 65,536 keep the transient near 4 MB.
CANDIDATE_CHUNK = 1 << 16


class Sampler:
    """Samples subgraph batches from a fixed graph held as CSR.

    edge_index: (2, 2E) symmetric, sorted by (src, dst) as ``TextGraph.edge_index`` is.
    """

    def __init__(
        self,
        edge_index: np.ndarray | torch.Tensor,
        num_nodes: int,
        mode: str = "ego",
        fanout: int | None = None,
        num_walks: int = 8,
        walk_length: int = 8,
        restart_p: float = 0.5,
        hops: int = 1,
    ) -> None:
        require_choice("sampler", mode, SAMPLERS)
        ei = torch.as_tensor(np.asarray(edge_index), dtype=torch.long)
        order = torch.argsort(ei[0] * num_nodes + ei[1])  # CSR needs rows sorted by src
        self.src, self.col = ei[0][order], ei[1][order]
        self.rowptr = torch.zeros(num_nodes + 1, dtype=torch.long)
        self.rowptr[1:] = torch.cumsum(torch.bincount(self.src, minlength=num_nodes), 0)
        self.deg = self.rowptr[1:] - self.rowptr[:-1]  # (N,)
        self.num_nodes, self.mode, self.fanout = num_nodes, mode, fanout or None  # 0: no cap
        self.num_walks, self.walk_length, self.restart_p = num_walks, walk_length, restart_p
        self.hops = hops
        self.full_edge_index = torch.stack([self.src, self.col])

    def sample(self, targets: np.ndarray | torch.Tensor, gen: torch.Generator | None = None) -> SubgraphBatch:
        """Subgraphs for ``targets`` (B,) global indices; ``gen=None`` is the keyed evaluation draw
        (each target's subgraph independent of the others in the batch)."""
        targets = torch.as_tensor(np.asarray(targets), dtype=torch.long).reshape(-1)
        if self.mode == "full":
            n = self.num_nodes
            return SubgraphBatch(
                nodes=torch.arange(n),
                edge_index=self.full_edge_index,
                batch=torch.zeros(n, dtype=torch.long),
                targets=targets.clone(),
                target_graph=torch.zeros(len(targets), dtype=torch.long),
            )
        if self.mode == "ego":
            graph_of, node = self._ego_hops(targets, gen)
        else:
            graph_of, node = self._rwr_nodes(targets, gen)
        return self._induce(targets, graph_of, node)

    def _ego_hops(self, targets: torch.Tensor, gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(subgraph id, global node) pairs within ``hops`` hops of each target.

        Each hop expands only the nodes first reached at the previous hop (the frontier), so
        a 2-hop draw costs about degree^2 pairs per target, not a walk over the whole graph.
        """
        n = self.num_nodes
        front_graph, front = torch.arange(len(targets)), targets
        seen = front_graph * n + front  # (subgraph, node) keys reached so far
        for _ in range(self.hops):
            local_graph, reached = self._ego_nodes(front, gen, targets[front_graph])
            key = torch.unique(front_graph[local_graph] * n + reached)  # frontier-local ids -> target subgraph ids
            new = key[~torch.isin(key, seen)]
            if len(new) == 0:
                break
            seen = torch.cat([seen, new])
            front_graph, front = new // n, new % n
        return seen // n, seen % n

    def _ego_nodes(self, targets: torch.Tensor, gen: torch.Generator | None, owner: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(subgraph id, global node) pairs: each of ``targets`` (the frontier) plus (up to
        ``fanout`` of) its neighbours; ``owner`` (same length): the target whose subgraph each
        frontier node grows, which keys the evaluation draw."""
        deg = self.deg[targets]  # (B,)
        graph_of = torch.repeat_interleave(torch.arange(len(targets)), deg)
        # position of each neighbour inside its target's CSR row
        offset = torch.arange(int(deg.sum())) - torch.repeat_interleave(torch.cumsum(deg, 0) - deg, deg)
        neigh = self.col[torch.repeat_interleave(self.rowptr[targets], deg) + offset]
        if self.fanout is not None and len(deg) and int(deg.max()) > self.fanout:
            # keep a random `fanout` of each row: rank a random key within each row
            if gen is not None:
                key = torch.rand(len(neigh), generator=gen).double()
            else:  # keyed by (subgraph's target, frontier node, neighbour): the same in any batch
                key = keyed_uniform(torch.repeat_interleave(owner, deg), torch.repeat_interleave(targets, deg), neigh)
            order = torch.argsort(graph_of.double() * 2 + key, stable=True)
            graph_of, neigh = graph_of[order], neigh[order]
            keep = offset < self.fanout  # offsets are still 0..deg-1 per row after the shuffle
            graph_of, neigh = graph_of[keep], neigh[keep]
        graph_of = torch.cat([torch.arange(len(targets)), graph_of])
        return graph_of, torch.cat([targets, neigh])

    def _rwr_nodes(self, targets: torch.Tensor, gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(subgraph id, global node) pairs visited by random walks with restart from each target."""
        start = targets.repeat_interleave(self.num_walks)  # (B * W,)
        walker_graph = torch.arange(len(targets)).repeat_interleave(self.num_walks)
        walker = torch.arange(self.num_walks).repeat(len(targets))  # (B * W,) walker number within its target
        cur, seen_nodes, seen_graph = start.clone(), [targets], [torch.arange(len(targets))]

        def uniform(t: int, draw: int) -> torch.Tensor:  # (B * W,) in [0, 1): step t's draw of each walker
            if gen is not None:
                return torch.rand(len(cur), generator=gen)
            return keyed_uniform(start, walker, t, draw)  # keyed by (target, walker, step, which draw)

        for t in range(self.walk_length):
            deg = self.deg[cur]
            step = (uniform(t, 0) * deg).long().clamp(max=(deg - 1).clamp(min=0))
            nxt = torch.where(deg > 0, self.col[(self.rowptr[cur] + step).clamp(max=max(len(self.col) - 1, 0))], start)
            restart = uniform(t, 1) < self.restart_p
            cur = torch.where(restart | (deg == 0), start, nxt)
            seen_nodes.append(cur)
            seen_graph.append(walker_graph)
        return torch.cat(seen_graph), torch.cat(seen_nodes)

    def _induce(self, targets: torch.Tensor, graph_of: torch.Tensor, node: torch.Tensor) -> SubgraphBatch:
        """Deduplicate (subgraph, node) pairs and add every edge between nodes of the same subgraph."""
        key = torch.unique(graph_of * self.num_nodes + node)  # sorted: subgraph-major, then node
        batch, nodes = key // self.num_nodes, key % self.num_nodes  # (n,)
        deg = self.deg[nodes]
        edge_index = torch.cat([self._local_edges(key, batch, nodes, deg, a, b) for a, b in _chunks(deg, CANDIDATE_CHUNK)]
                               or [torch.empty(2, 0, dtype=torch.long)], dim=1)  # (2, e) local, src-major
        target_pos = torch.searchsorted(key, torch.arange(len(targets)) * self.num_nodes + targets)
        return SubgraphBatch(nodes, edge_index, batch, target_pos, torch.arange(len(targets)))

    def _local_edges(self, key: torch.Tensor, batch: torch.Tensor, nodes: torch.Tensor, deg: torch.Tensor,
                     a: int, b: int) -> torch.Tensor:
        """(2, e) local edges leaving local nodes a..b-1: each CSR edge of theirs whose end is in the same subgraph."""
        d = deg[a:b]
        src_local = torch.repeat_interleave(torch.arange(a, b), d)
        offset = torch.arange(int(d.sum())) - torch.repeat_interleave(torch.cumsum(d, 0) - d, d)
        dst_key = batch[src_local] * self.num_nodes + self.col[torch.repeat_interleave(self.rowptr[nodes[a:b]], d) + offset]
        pos = torch.searchsorted(key, dst_key).clamp(max=len(key) - 1)
        hit = key[pos] == dst_key
        return torch.stack([src_local[hit], pos[hit]])


def _chunks(deg: torch.Tensor, limit: int) -> list[tuple[int, int]]:
    """Consecutive ranges [a, b) of nodes whose degrees sum to about ``limit`` (plus at most one node's)."""
    ends = torch.cumsum(deg, 0)
    total = int(ends[-1]) if len(ends) else 0
    if total == 0:  # no candidate edge (isolated nodes, a graph without edges): nothing to induce
        return []
    cuts = torch.searchsorted(ends, torch.arange(1, -(-total // limit)) * limit, right=True).tolist()
    bounds = sorted({0, *cuts, len(deg)})
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
