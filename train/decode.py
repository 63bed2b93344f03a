"""Caption generation from the prefix: greedy, beam search, and the paper's hybrid (greedy for
the first n tokens, then beam search), batched, in one pass over GPT-2's key/value cache."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from train.data import collate
from train.model import Captioner


@dataclass(frozen=True)
class DecodeConfig:
    """Every key is documented in params.yaml (section ``evaluate``)."""

    method: str = "hybrid"  # greedy | beam | hybrid
    beam_size: int = 5
    greedy_tokens: int = 3  # hybrid: tokens chosen greedily before the beam takes over
    max_tokens: int = 30
    length_penalty: float = 1.0


METHODS = ("greedy", "beam", "hybrid")


@torch.no_grad()
def search(model: Captioner, embeds: torch.Tensor, cfg: DecodeConfig, greedy_steps: int, beams: int) -> torch.Tensor:
    """Token ids (B, T) after the prefix embeddings (B, L_p, h): ``greedy_steps`` greedy tokens,
    then beam search with ``beams`` beams for the rest (``beams`` = 1: greedy all the way). One
    pass over GPT-2 with its key/value cache: the prefix is encoded once, and the beams grow out
    of the greedy head without re-reading it. A finished caption keeps its score and is padded
    with EOS; the best beam maximises log p / length ** length_penalty."""
    eos = model.tokenizer.eos_token_id
    out = model.gpt2(inputs_embeds=embeds, use_cache=True)
    cache, logits = out.past_key_values, out.logits[:, -1].float()  # (B, V)
    batch = embeds.shape[0]
    tokens = torch.zeros(batch, 0, dtype=torch.long, device=embeds.device)
    done = torch.zeros(batch, dtype=torch.bool, device=embeds.device)
    width, scores, lengths = 1, torch.zeros(batch, device=embeds.device), torch.zeros(batch, device=embeds.device)
    for step in range(cfg.max_tokens):
        if step == greedy_steps and beams > 1:  # the beams branch off the greedy head here
            width = beams
            rows = torch.arange(batch, device=embeds.device).repeat_interleave(beams)
            cache.reorder_cache(rows)
            logits, tokens, done, lengths = logits[rows], tokens[rows], done[rows], lengths[rows]
            scores = torch.zeros(batch, beams, device=embeds.device)
            scores[:, 1:] = -math.inf  # identical copies: only the first may spawn candidates at first
            scores = scores.flatten()
        logp = torch.log_softmax(logits, dim=-1)  # (B·w, V)
        logp[done] = -math.inf
        logp[done, eos] = 0.0  # a finished caption only continues with EOS, at no cost
        vocab = logp.shape[-1]
        top, index = (scores[:, None] + logp).view(batch, width * vocab).topk(width, dim=-1)  # (B, w)
        rows = (torch.arange(batch, device=embeds.device)[:, None] * width + index // vocab).flatten()
        words = (index % vocab).flatten()  # (B·w,)
        tokens = torch.cat([tokens[rows], words[:, None]], dim=1)
        lengths = lengths[rows] + (~done[rows]).float()
        done, scores = done[rows] | (words == eos), top.flatten()
        if bool(done.all()):
            break
        cache.reorder_cache(rows)
        out = model.gpt2(input_ids=words[:, None], past_key_values=cache, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1].float()
    final = (scores / lengths.clamp_min(1) ** cfg.length_penalty).view(batch, width)
    best = torch.arange(batch, device=embeds.device) * width + final.argmax(dim=-1)
    return tokens[best]


@torch.no_grad()
def decode(model: Captioner, batch: dict[str, torch.Tensor], cfg: DecodeConfig) -> list[str]:
    if cfg.method not in METHODS:
        raise ValueError(f"evaluate.method: unknown decoding {cfg.method!r}; known: {METHODS}")
    embeds = model.prefix(batch).embeddings  # (B, L_p, h)
    greedy_steps = {"greedy": cfg.max_tokens, "beam": 0, "hybrid": cfg.greedy_tokens}[cfg.method]
    tokens = search(model, embeds, cfg, greedy_steps, cfg.beam_size)
    eos = model.tokenizer.eos_token_id
    return [_text(model, row, eos) for row in tokens.tolist()]


def _text(model: Captioner, ids: list[int], eos: int) -> str:
    if eos in ids:
        ids = ids[: ids.index(eos)]
    return model.tokenizer.decode(ids, skip_special_tokens=True).strip()


def caption_images(model: Captioner, dataset, cfg: DecodeConfig, batch_size: int, device: torch.device) -> list[str]:
    """Decode every item of an image dataset (``train.data.Images``), in order."""
    model.eval().to(device)
    captions: list[str] = []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate):
        captions += decode(model, {k: v.to(device) for k, v in batch.items()}, cfg)
    return captions
