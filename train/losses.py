"""The training objective (docs/method.md §7, eqs. 16-19): L_gen + α1 L_align + α2 L_gate."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from train.config import LossConfig
from train.data import Batch
from train.model import Captioner, Prefix


def generation_loss(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """logits (B, T, V) from :meth:`Captioner.caption_forward`."""
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
    raise ValueError(f"train.loss.align: unknown alignment loss {cfg.align!r} (cosine | infonce)")


def gate_loss(model: Captioner, prefix: Prefix, cfg: LossConfig) -> torch.Tensor:
    """Mean absolute value (an L1 norm divided by its size, so λ does not scale with d)."""
    if model.local_guidance is None:
        return prefix.embeddings.new_zeros(())
    if cfg.gate_on == "activations":
        return cfg.gate_lambda * prefix.gate.abs().mean()
    if cfg.gate_on == "weights":
        return cfg.gate_lambda * model.local_guidance.gate.weight.abs().mean()
    raise ValueError(f"train.loss.gate_on: unknown target {cfg.gate_on!r} (activations | weights)")


def grounding_loss(attention: torch.Tensor, prefix: Prefix, ground: torch.Tensor, first_slot: int,
                   heads: int) -> torch.Tensor:
    """Attention supervision, as in grounded captioning (Zhou et al. 2019, GVD): each supervised
    head of GPT-2's last layer should put its attention, from every token grounded to an object,
    on the region tokens that show that object: −log(attention mass on them), averaged over the
    grounded tokens and the heads. Naming a relation or the next object then starts from a
    learnt look at the token of the object just named (its spatial context says what lies
    around it) instead of a lookup GPT-2 must discover on its own.

    attention (B, H, T, L_p) from :meth:`Captioner.caption_forward`; ground (B, T, V) from
    ``train.data.collate``; region token s sits at prefix position ``first_slot + s``."""
    slots = prefix.region_slots  # (B, S) node index per slot, -1 empty
    target = ground.gather(2, slots.clamp_min(0)[:, None, :].expand(-1, ground.shape[1], -1))
    target = target & (slots >= 0)[:, None, :]  # (B, T, S)
    grounded = target.any(dim=-1)  # (B, T)
    if not grounded.any():
        return attention.new_zeros(())
    on_regions = attention[:, :heads, :, first_slot:first_slot + slots.shape[1]]  # (B, heads, T, S)
    mass = (on_regions * target[:, None]).sum(dim=-1).clamp_min(1e-6)  # (B, heads, T)
    return -mass.log().permute(0, 2, 1)[grounded].mean()


def total_loss(model: Captioner, batch: Batch, cfg: LossConfig) -> dict[str, torch.Tensor]:
    prefix = model.prefix(batch)
    grounding = cfg.grounding_weight > 0
    if grounding and (prefix.region_slots is None or batch.ground is None):
        raise ValueError("train.loss.grounding_weight needs region tokens (model.prefix_regions tokens) and "
                         "phrase groundings of the captions")
    if grounding and not 0 < cfg.grounding_heads <= model.gpt2.config.n_head:
        raise ValueError(f"train.loss.grounding_heads: {cfg.grounding_heads} is not within 1..{model.gpt2.config.n_head} "
                         "(the heads of GPT-2's last layer)")
    logits, attention = model.caption_forward(prefix.embeddings, batch.tokens, batch.mask, grounding)
    parts = {
        "gen": generation_loss(logits, batch.tokens, batch.mask),
        "align": (alignment_loss(prefix.fused, batch.text, cfg) if prefix.fused is not None
                  else prefix.embeddings.new_zeros(())),
        "gate": gate_loss(model, prefix, cfg),
    }
    parts["total"] = parts["gen"] + cfg.alpha_align * parts["align"] + cfg.alpha_gate * parts["gate"]
    if grounding:
        parts["ground"] = grounding_loss(attention, prefix, batch.ground, model.cfg.prefix_length,
                                         cfg.grounding_heads)
        parts["total"] = parts["total"] + cfg.grounding_weight * parts["ground"]
    return parts
