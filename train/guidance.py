"""Multi-scale semantic guidance (docs/method.md §5, eqs. 11-12)."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch_geometric.utils import scatter


class GlobalGuidance(nn.Module):
    """Eq. 11: W_global = softmax(f_fused E_globalᵀ / √d) E_global, over a fixed keyword bank."""

    def __init__(self, bank: torch.Tensor):
        super().__init__()
        self.register_buffer("bank", bank)  # (S, d) CLIP text embeddings of the scene keywords

    def forward(self, fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """fused (B, d) → guide (B, d), attention over the bank (B, S)."""
        attention = torch.softmax(fused @ self.bank.T / math.sqrt(self.bank.shape[1]), dim=-1)
        return attention @ self.bank, attention


class LocalGuidance(nn.Module):
    """Eq. 12: W_local = sigmoid(W_g [f_fused; f_local_text]) ⊙ f_local_text (a per-dimension gate)."""

    def __init__(self, dim: int):
        super().__init__()
        self.gate = nn.Linear(2 * dim, dim)

    def forward(self, fused: torch.Tensor, local_text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """fused, local_text (B, d) → guide (B, d), gate activations (B, d)."""
        gate = torch.sigmoid(self.gate(torch.cat([fused, local_text], dim=-1)))
        return gate * local_text, gate


def pool_local_keywords(bank: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """f_local_text: the weighted mean of the object-bank embeddings of an image's region keywords.

    bank (C, d); ids (B, N, k) keyword ids (-1 = none: background or padding); weights (B, N, k)
    ≥ 0 → (B, d). An image without any keyword gets a zero vector: it has no local keywords,
    which is a fact about the image, not a missing feature.
    """
    w = weights * (ids >= 0)
    w = w / w.sum(dim=(1, 2), keepdim=True).clamp_min(1e-6)
    return torch.einsum("bnk,bnkd->bd", w, bank[ids.clamp_min(0)])


class GraphKeywords(nn.Module):
    """f_local_text read from the graph (the second reading of eq. 12): each node's output V'_i is
    projected into CLIP's text space and attends over the object bank as eq. 11 attends over the
    scene bank; an image's f_local_text is its nodes' readouts, mean-pooled. The keywords nearest
    the nodes weigh most, and unlike the detector's labels the GAT's output reaches them."""

    def __init__(self, node_dim: int, bank: torch.Tensor):
        super().__init__()
        self.project = nn.Linear(node_dim, bank.shape[1])
        self.register_buffer("bank", bank)  # (C, d) CLIP text embeddings of the object keywords

    def forward(self, nodes: torch.Tensor, node_batch: torch.Tensor,
                n_images: int) -> tuple[torch.Tensor, torch.Tensor]:
        """nodes (V, ·), node_batch (V,) → f_local_text (B, d), attention over the bank (B, C).
        An image without regions gets zeros, as with the keyword reading."""
        attention = torch.softmax(self.project(nodes) @ self.bank.T / math.sqrt(self.bank.shape[1]), dim=-1)  # (V, C)
        pooled = scatter(attention, node_batch, dim=0, dim_size=n_images, reduce="mean")  # (B, C)
        return pooled @ self.bank, pooled
