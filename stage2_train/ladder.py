"""G-Ladder: the side network that reads the frozen LLM's rungs (docs/design.md section 1.2).

For rung i with pooled LLM state h_i (n, H):

    h_i    <- (h_i - mean_i) / std_i               with --standardize (training-set statistics)
    P_i(h) = Linear(H, K) -> LayerNorm(K) -> ReLU -> Linear(K, K)     as the reference, whatever --rung-norm/--rung-activation
    g_i    = sigmoid(a_i / T)                      a_i learned, init 0; T = 0.1
    z_0    = GNN_0(P_0(h_0))
    z_i    = GNN_i(g_i * P_i(h_i) + (1 - g_i) * z_{i-1})
             (--rung-grad own: z_{i-1} enters as a constant, so rung i's loss trains rung i alone)
    logits_i[v] = Linear(2K, C)([z_i[v] || mean of z_i over v's subgraph])             readout "target-mean"
    logits_i[v] = Linear(3K, C)([P_i(h_i)[v] || z_i[v] || mean of z_i over v's subgraph])  readout "ego"

The ``ego`` readout also hands the head the node's own projected state, untouched by any
neighbour, so that on heterophilous graphs (neighbours mostly of other classes) the head can
weigh the node's own text against its neighbourhood instead of reading only mixed states.

Each GNN_i is ``num_layers`` convolutions K -> K, each followed by Norm (LayerNorm, or none
with --rung-norm none), Act (ReLU, or ELU with --rung-activation elu) and dropout, except the final rung's last convolution, which stays linear (the reference adds
an activation there by comparing layer ids with a count; we do not).

With ``--rung-grad joint`` (the reference) every head's loss also trains the rungs below it;
with ``own`` each rung is trained by its own head only, so a shallow rung learns what its own
LLM state says instead of serving the deeper heads (on a graph whose deeper states or edges
carry no extra signal, the deeper heads then fit the training nodes without dragging the
shallow ones along). A run whose depth is chosen on validation keeps rungs ``0..d-1`` only
(:meth:`GLadder.keep_rungs`).

Rungs can be computed one at a time (:meth:`GLadder.rung`) so that stage 3 runs rung i as
soon as LLM state i exists; :meth:`GLadder.forward` is the same loop over all rungs.

Shapes: n nodes in the batch of subgraphs, B targets, S rungs, H LLM width, K side width
(``hidden_channels``), C classes.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.core.options import require_choice
from stage2_train.config import GNNS, READOUTS, RUNG_ACTIVATIONS, RUNG_GRADS, RUNG_NORMS
from stage2_train.sampling import SubgraphBatch
from stage2_train.standardize import StateScaler


def make_conv(gnn: str, in_channels: int, out_channels: int) -> nn.Module:
    """One PyG convolution by name (``sage``, ``gcn``, ``gat``)."""
    from torch_geometric.nn import GATConv, GCNConv, SAGEConv

    require_choice("gnn", gnn, GNNS)
    if gnn == "sage":
        return SAGEConv(in_channels, out_channels)
    if gnn == "gcn":
        return GCNConv(in_channels, out_channels)
    return GATConv(in_channels, out_channels, heads=1)


def make_norm(norm: str, channels: int) -> nn.Module:
    """``layer``: LayerNorm(channels); ``none``: identity."""
    require_choice("norm", norm, RUNG_NORMS)
    return nn.LayerNorm(channels) if norm == "layer" else nn.Identity()


def make_activation(activation: str) -> nn.Module:
    """``relu`` or ``elu`` (alpha 1)."""
    require_choice("activation", activation, RUNG_ACTIVATIONS)
    return nn.ReLU() if activation == "relu" else nn.ELU()


def subgraph_readout(z: torch.Tensor, sub: SubgraphBatch) -> torch.Tensor:
    """``[z[target] || mean of z over the target's subgraph]``: (n, K) -> (B, 2K)."""
    num_graphs = int(sub.target_graph.max()) + 1 if sub.target_graph.numel() else 0
    sums = torch.zeros(num_graphs, z.shape[1], dtype=z.dtype, device=z.device).index_add_(0, sub.batch, z)
    counts = torch.bincount(sub.batch, minlength=num_graphs).clamp(min=1).to(z.dtype)
    means = sums / counts[:, None]  # (G, K)
    return torch.cat([z[sub.targets], means[sub.target_graph]], dim=1)


class RungGNN(nn.Module):
    """``num_layers`` convolutions K -> K; ``last_linear`` leaves the last one without norm/activation."""

    def __init__(
        self, hidden_channels: int, num_layers: int, gnn: str, dropout: float, last_linear: bool,
        activation: str = "relu", norm: str = "layer",
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(make_conv(gnn, hidden_channels, hidden_channels) for _ in range(num_layers))
        self.norms = nn.ModuleList(make_norm(norm, hidden_channels) for _ in range(num_layers))
        self.act = make_activation(activation)
        self.dropout, self.last_linear = dropout, last_linear

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        for j, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = conv(x, edge_index)
            if self.last_linear and j == len(self.convs) - 1:
                break
            x = F.dropout(self.act(norm(x)), p=self.dropout, training=self.training)
        return x


class GLadder(nn.Module):
    """The G-Ladder with one exit head per rung.

    Args:
        in_channels: H, the LLM hidden size.
        hidden_channels: K, the side width.
        out_channels: C, the number of classes.
        num_rungs: S, the number of LLM states read.
        gnn: ``sage`` (default), ``gcn`` or ``gat``.
        num_layers: convolutions per rung (1 or 2).
        dropout: after each hidden activation and on the readout.
        temperature: T of the gates.
        standardize: z-score each state with statistics set before training (``scaler``).
        readout: ``target-mean`` (the reference) or ``ego`` (also the node's own projected state).
        rung_grad: ``joint`` (the reference: a head's loss reaches every rung below it) or ``own``
            (each rung trained by its own head; the rung below enters as a constant).
        activation: ``relu`` or ``elu``, after every hidden convolution.
        norm: ``layer`` (LayerNorm before each of those activations) or ``none``.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        out_channels: int,
        num_rungs: int,
        gnn: str = "sage",
        num_layers: int = 1,
        dropout: float = 0.5,
        temperature: float = 0.1,
        standardize: bool = False,
        readout: str = "target-mean",
        rung_grad: str = "joint",
        activation: str = "relu",
        norm: str = "layer",
    ) -> None:
        super().__init__()
        require_choice("readout", readout, READOUTS)
        require_choice("rung_grad", rung_grad, RUNG_GRADS)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
            raise ValueError(f"temperature {temperature!r}: must be a finite number > 0")
        K = hidden_channels
        self.readout, self.rung_grad = readout, rung_grad
        self.scaler = StateScaler(num_rungs, in_channels) if standardize else None
        self.num_rungs, self.temperature, self.dropout = num_rungs, temperature, dropout
        self.proj = nn.ModuleList(  # LayerNorm and ReLU whatever the rungs use: the reference's projection
            nn.Sequential(nn.Linear(in_channels, K), make_norm("layer", K), make_activation("relu"), nn.Linear(K, K))
            for _ in range(num_rungs)
        )
        self.gate_logits = nn.Parameter(torch.zeros(num_rungs))  # a_i; rung 0 has no z_{-1}, its a_0 is unused
        self.gnns = nn.ModuleList(
            RungGNN(K, num_layers, gnn, dropout, last_linear=(i == num_rungs - 1), activation=activation, norm=norm)
            for i in range(num_rungs)
        )
        width = 3 * K if readout == "ego" else 2 * K
        self.heads = nn.ModuleList(nn.Linear(width, out_channels) for _ in range(num_rungs))

    def gates(self) -> torch.Tensor:
        """(S,) g_i = sigmoid(a_i / T); g_0 is reported but unused (rung 0 has nothing to mix)."""
        return torch.sigmoid(self.gate_logits / self.temperature)

    def rung(
        self, i: int, h_i: torch.Tensor, z_prev: torch.Tensor | None, sub: SubgraphBatch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Compute rung i from LLM state i.

        h_i: (n, H) pooled state i of the subgraph nodes; z_prev: (n, K) or None for i = 0.
        Returns z_i (n, K) and logits_i (B, C) for the targets.
        """
        if self.scaler is not None:
            h_i = self.scaler(i, h_i)
        own = self.proj[i](h_i)  # (n, K)
        x = own
        if i > 0:
            if self.rung_grad == "own":
                z_prev = z_prev.detach()
            g = torch.sigmoid(self.gate_logits[i] / self.temperature)
            x = g * own + (1 - g) * z_prev
        z = self.gnns[i](x, sub.edge_index)  # (n, K)
        r = subgraph_readout(z, sub)  # (B, 2K)
        if self.readout == "ego":
            r = torch.cat([own[sub.targets], r], dim=1)  # (B, 3K)
        r = F.dropout(r, p=self.dropout, training=self.training)
        return z, self.heads[i](r)

    def keep_rungs(self, depth: int) -> None:
        """Keep rungs ``0..depth-1`` (their heads, gates and statistics) and drop the rest: the
        ladder of a run whose depth was chosen on validation. Rung ``depth-1`` keeps the norm and
        activation it was trained with."""
        if not 1 <= depth <= self.num_rungs:
            raise ValueError(f"depth {depth}: the ladder has {self.num_rungs} rungs")
        self.proj, self.gnns, self.heads = self.proj[:depth], self.gnns[:depth], self.heads[:depth]
        self.gate_logits = nn.Parameter(self.gate_logits.detach()[:depth].clone(), requires_grad=self.gate_logits.requires_grad)
        if self.scaler is not None:
            self.scaler.keep_states(depth)
        self.num_rungs = depth

    def forward(self, states: torch.Tensor, sub: SubgraphBatch) -> torch.Tensor:
        """states: (n, S, H) -> logits (S, B, C), one row of logits per exit head."""
        z, out = None, []
        for i in range(self.num_rungs):
            z, logits = self.rung(i, states[:, i], z, sub)
            out.append(logits)
        return torch.stack(out)
