"""GAT local feature enhancement (docs/method.md §3, eqs. 7-9) over a batch of per-image graphs.

All images of a batch form one disjoint graph (PyG style: nodes concatenated, edge indices
offset), so one GATConv call per layer serves the whole batch, with no loop over images.
"""
from __future__ import annotations

import torch
from torch import nn
from torch_geometric.nn import GATConv


class GATEncoder(nn.Module):
    """Stacked GATConv layers with ELU after each (eq. 9: V'_i = ELU(Σ_j â_ij W V_j))."""

    def __init__(self, in_dim: int, hidden: int, heads: int, layers: int, dropout: float, edge_dim: int):
        """``edge_dim``: width of the edge attributes (the Gaussian weight, relative box geometry); 0 for none."""
        super().__init__()
        dims = [in_dim] + [hidden * heads] * layers
        self.convs = nn.ModuleList(
            GATConv(d_in, hidden, heads=heads, dropout=dropout, edge_dim=edge_dim or None, add_self_loops=True)
            for d_in in dims[:-1]
        )
        self.out_dim = hidden * heads

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor | None,
                return_attention: bool = False) -> tuple[torch.Tensor, list]:
        """x (V, D) node features, edge_index (2, E), edge_attr (E, edge_dim) or None → (V, hidden*heads)."""
        attention = []
        for conv in self.convs:
            if return_attention:
                x, (att_index, alpha) = conv(x, edge_index, edge_attr=edge_attr, return_attention_weights=True)
                attention.append((att_index, alpha))
            else:
                x = conv(x, edge_index, edge_attr=edge_attr)
            x = nn.functional.elu(x)
        return x, attention
