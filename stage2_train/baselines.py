"""The baselines a practitioner tries first on the same cached embeddings: MLP, GCN, SAGE.

They read one cached LLM state (default the last) and train with the same splits, seeds,
early stopping and output format as the ladder. They share the ladder's call signature,
``forward(states (n, 1, H), sub) -> logits (1, B, C)``, so the loop, checkpoint and
evaluation code treat every architecture alike (one "rung", one head).

GCN/SAGE are the usual full-batch node classifiers (``sampler="full"``): ``num_layers``
convolutions H -> K -> ... -> C, ReLU and dropout between them. The MLP ignores edges.

Shapes: n nodes in the batch, B targets, H LLM width, K ``hidden_channels``, C classes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.core.options import require_choice
from stage2_train.ladder import make_conv
from stage2_train.sampling import SubgraphBatch
from stage2_train.standardize import StateScaler

BASELINES = ("mlp", "gcn", "sage")


class NodeBaseline(nn.Module):
    """MLP or a PyG GCN/SAGE stack on one LLM state; one exit head (S = 1)."""

    def __init__(
        self, arch: str, in_channels: int, hidden_channels: int, out_channels: int, num_layers: int = 2, dropout: float = 0.5,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        require_choice("baseline", arch, BASELINES)
        sizes = [in_channels] + [hidden_channels] * (num_layers - 1) + [out_channels]
        if arch == "mlp":
            self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        else:
            self.layers = nn.ModuleList(make_conv(arch, a, b) for a, b in zip(sizes, sizes[1:]))
        self.arch, self.dropout, self.num_rungs = arch, dropout, 1
        self.scaler = StateScaler(1, in_channels) if standardize else None  # --standardize: training-set z-score

    def gates(self) -> torch.Tensor:
        return torch.zeros(0)

    def forward(self, states: torch.Tensor, sub: SubgraphBatch) -> torch.Tensor:
        """states: (n, 1, H) -> logits (1, B, C)."""
        x = states[:, 0] if self.scaler is None else self.scaler(0, states[:, 0])  # (n, H)
        x = F.dropout(x, p=self.dropout, training=self.training)
        for j, layer in enumerate(self.layers):
            x = layer(x) if self.arch == "mlp" else layer(x, sub.edge_index)
            if j < len(self.layers) - 1:
                x = F.dropout(F.relu(x), p=self.dropout, training=self.training)
        return x[sub.targets].unsqueeze(0)  # (1, B, C)
