"""Prefix mappers (docs/method.md eq. 14): C_fused → L_p GPT-2 input embeddings. ClipCap's two kinds."""
from __future__ import annotations

import torch
from torch import nn

from features.config import choices
from train.config import ModelConfig


class MLPMapper(nn.Module):
    """Linear → Tanh → Linear to L_p × h (ClipCap's MLP; hidden = L_p·h/2 unless given)."""

    def __init__(self, in_dim: int, h: int, prefix_length: int, hidden: int = 0):
        super().__init__()
        self.prefix_length = prefix_length
        hidden = hidden or (prefix_length * h) // 2
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, prefix_length * h))

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.net(c).view(c.shape[0], self.prefix_length, -1)  # (B, L_p, h)


class TransformerMapper(nn.Module):
    """ClipCap's transformer mapper: the input is projected to ``clip_length`` tokens, learned
    prefix constants are appended, a transformer encoder mixes them, and the outputs at the
    constants' positions are the prefix."""

    def __init__(self, in_dim: int, h: int, prefix_length: int, clip_length: int = 10, layers: int = 8,
                 heads: int = 8):
        super().__init__()
        self.clip_length = clip_length
        self.project = nn.Linear(in_dim, clip_length * h)
        self.constants = nn.Parameter(torch.randn(prefix_length, h))
        layer = nn.TransformerEncoderLayer(h, heads, dim_feedforward=2 * h, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        tokens = self.project(c).view(c.shape[0], self.clip_length, -1)  # (B, L_clip, h)
        constants = self.constants.unsqueeze(0).expand(c.shape[0], -1, -1)  # (B, L_p, h)
        return self.encoder(torch.cat([tokens, constants], dim=1))[:, self.clip_length:]  # (B, L_p, h)


MAPPERS = choices(ModelConfig, "mapping")
