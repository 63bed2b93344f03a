"""The training objective (METHOD.md §7, eqs. 16-19): L_gen + α1 L_align + α2 L_gate."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from train.model import Captioner, Prefix


@dataclass(frozen=True)
class LossConfig:
    """Every key is documented in params.yaml (section ``train``)."""

    alpha_align: float = 0.7  # α1
    alpha_gate: float = 0.3  # α2
    gate_lambda: float = 1.0  # λ inside L_gate = λ‖·‖₁
    align: str = "cosine"  # cosine | infonce
    infonce_temperature: float = 0.07
    gate_on: str = "activations"  # activations | weights (of W_g)


def generation_loss(model: Captioner, prefix: Prefix, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    logits = model.caption_logits(prefix.embeddings, tokens, mask)  # (B, T, V)
    targets = tokens.masked_fill(mask == 0, -100)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


def alignment_loss(fused: torch.Tensor, text: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """Between the trainable f_fused and the caption's CLIP text embedding (the frozen CLIP pair
    would give a constant)."""
    if cfg.align == "cosine":
        return (1 - F.cosine_similarity(fused, text, dim=-1)).mean()
    if cfg.align == "infonce":
        logits = F.normalize(fused, dim=-1) @ F.normalize(text, dim=-1).T / cfg.infonce_temperature
        target = torch.arange(len(fused), device=fused.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    raise ValueError(f"train.align: unknown alignment loss {cfg.align!r} (cosine | infonce)")


def gate_loss(model: Captioner, prefix: Prefix, cfg: LossConfig) -> torch.Tensor:
    """Mean absolute value (an L1 norm divided by its size, so λ does not scale with d)."""
    if model.local_guidance is None:
        return prefix.embeddings.new_zeros(())
    if cfg.gate_on == "activations":
        return cfg.gate_lambda * prefix.gate.abs().mean()
    if cfg.gate_on == "weights":
        return cfg.gate_lambda * model.local_guidance.gate.weight.abs().mean()
    raise ValueError(f"train.gate_on: unknown target {cfg.gate_on!r} (activations | weights)")


def total_loss(model: Captioner, batch: dict[str, torch.Tensor], cfg: LossConfig) -> dict[str, torch.Tensor]:
    prefix = model.prefix(batch)
    parts = {
        "gen": generation_loss(model, prefix, batch["tokens"], batch["mask"]),
        "align": (alignment_loss(prefix.fused, batch["text"], cfg) if prefix.fused is not None
                  else prefix.embeddings.new_zeros(())),
        "gate": gate_loss(model, prefix, cfg),
    }
    parts["total"] = parts["gen"] + cfg.alpha_align * parts["align"] + cfg.alpha_gate * parts["gate"]
    return parts
