"""Caption generation from the prefix: greedy, beam search, and the paper's hybrid (greedy for
the first n tokens, then beam search), batched, in one pass over GPT-2's key/value cache; and
top-p sampling (ClipCap's other decoder, and SCST's samples)."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from features.config import choices
from train.config import DecodeConfig
from train.data import Batch, collate
from train.model import Captioner

METHODS = choices(DecodeConfig, "method")
SEARCHES = tuple(m for m in METHODS if m != "sample")  # the deterministic decodings (a report shows each)
RERANKERS = choices(DecodeConfig, "rerank")
# texts → their CLIP text embeddings (n, d): the pipeline's frozen text tower
TextEncoder = Callable[[list[str]], np.ndarray]


@torch.no_grad()
def search(model: Captioner, embeds: torch.Tensor, cfg: DecodeConfig, greedy_steps: int,
           beams: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, w, T) of the final beams after the prefix embeddings (B, L_p, h), best first,
    and their scores (B, w): ``greedy_steps`` greedy tokens,
    then beam search with ``beams`` beams for the rest (``beams`` = 1: greedy all the way). One
    pass over GPT-2 with its key/value cache: the prefix is encoded once, and the beams grow out
    of the greedy head without re-reading it. A finished caption keeps its score and is padded
    with EOS; the best beam maximises log p / length ** length_penalty."""
    eos = model.tokenizer.eos_token_id
    out = model.gpt2(inputs_embeds=embeds, use_cache=True)
    cache, logits = out.cache, out.logits[:, -1].float()  # (B, V)
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
        vocab = logp.shape[-1]
        if cfg.no_repeat_ngram_size:
            logp[repeated_ngrams(tokens, cfg.no_repeat_ngram_size, vocab) & ~done[:, None]] = -math.inf
        logp[done] = -math.inf
        logp[done, eos] = 0.0  # a finished caption only continues with EOS, at no cost
        top, index = (scores[:, None] + logp).view(batch, width * vocab).topk(width, dim=-1)  # (B, w)
        rows = (torch.arange(batch, device=embeds.device)[:, None] * width + index // vocab).flatten()
        words = (index % vocab).flatten()  # (B·w,)
        tokens = torch.cat([tokens[rows], words[:, None]], dim=1)
        lengths = lengths[rows] + (~done[rows]).float()
        done, scores = done[rows] | (words == eos), top.flatten()
        if bool(done.all()):
            break
        cache.reorder_cache(rows)
        out = model.gpt2(input_ids=words[:, None], cache=cache, use_cache=True)
        cache, logits = out.cache, out.logits[:, -1].float()
    final, order = (scores / lengths.clamp_min(1) ** cfg.length_penalty).view(batch, width).sort(dim=-1, descending=True, stable=True)
    rows = (torch.arange(batch, device=embeds.device)[:, None] * width + order).flatten()
    return tokens[rows].view(batch, width, -1), final


def repeated_ngrams(tokens: torch.Tensor, n: int, vocab: int) -> torch.Tensor:
    """(R, V): True where the next token would complete an n-gram the row already holds (tokens
    (R, T)), the rule of transformers' ``no_repeat_ngram_size``. A Python loop over rows: R is the
    batch times the beams and T ≤ ``max_tokens``, small next to a GPT-2 step."""
    banned = torch.zeros(len(tokens), vocab, dtype=torch.bool)
    for row, ids in enumerate(tokens.tolist()):
        head = ids[len(ids) - n + 1:] if n > 1 else []
        for k in range(len(ids) - n + 1):
            if ids[k:k + n - 1] == head:
                banned[row, ids[k + n - 1]] = True
    return banned.to(tokens.device)


@torch.no_grad()
def sample(model: Captioner, embeds: torch.Tensor, max_tokens: int, top_p: float = 1.0,
           temperature: float = 1.0) -> torch.Tensor:
    """Token ids (B, T) drawn one at a time after the prefix embeddings (B, L_p, h), over GPT-2's
    key/value cache, from the distribution cut by :func:`top_p_filter` (1.0: the model's own, as
    SCST samples); EOS repeats after a caption ends. Each step draws as transformers' ``generate``
    with ``do_sample`` does, so the same seed gives the same captions."""
    eos = model.tokenizer.eos_token_id
    out = model.gpt2(inputs_embeds=embeds, use_cache=True)
    done = torch.zeros(embeds.shape[0], dtype=torch.bool, device=embeds.device)
    steps = []
    for _ in range(max_tokens):
        logits = top_p_filter(out.logits[:, -1].float() / temperature, top_p)  # (B, V)
        words = torch.multinomial(torch.softmax(logits, dim=-1), 1).squeeze(1)  # (B,)
        words = words.masked_fill(done, eos)
        steps.append(words)
        done |= words == eos
        if bool(done.all()):
            break
        out = model.gpt2(input_ids=words[:, None], cache=out.cache, use_cache=True)
    return torch.stack(steps, dim=1)


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al. 2020) by transformers' rule: of the tokens sorted by
    probability, those whose cumulative mass from the least probable up stays ≤ 1 − top_p are
    set to −inf; the most probable always stays. (R, V) → (R, V)."""
    if top_p >= 1:
        return logits
    ascending, order = logits.sort(dim=-1)
    drop = ascending.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p  # (R, V) in sorted order
    drop[:, -1] = False
    return logits.masked_fill(drop.scatter(1, order, drop), -math.inf)


def check_decode(cfg: DecodeConfig, text_encoder: TextEncoder | None = None) -> None:
    if cfg.method not in METHODS:
        raise ValueError(f"evaluate.decode.method: unknown decoding {cfg.method!r}; known: {METHODS}")
    if cfg.rerank not in RERANKERS:
        raise ValueError(f"evaluate.decode.rerank: unknown {cfg.rerank!r}; known: {RERANKERS}")
    if not 0 < cfg.top_p <= 1 or cfg.temperature <= 0:
        raise ValueError(f"evaluate.decode: top_p {cfg.top_p} must be in (0, 1] and temperature "
                         f"{cfg.temperature} above 0")
    if cfg.rerank != "none" and (cfg.method in ("greedy", "sample") or cfg.beam_size < 2):
        raise ValueError(f"evaluate.decode.rerank {cfg.rerank} ranks the final beams: it needs beam or hybrid "
                         "decoding with beam_size >= 2")
    if cfg.rerank == "clip" and text_encoder is None:
        raise ValueError("evaluate.decode.rerank clip needs CLIP's text encoder")


@torch.no_grad()
def decode(model: Captioner, batch: Batch, cfg: DecodeConfig,
           text_encoder: TextEncoder | None = None) -> list[str]:
    """One caption per image of the batch: of the final beams, the most probable one, or with
    ``rerank: clip`` the one whose CLIP text embedding is closest to the image's CLIP embedding,
    or with ``rerank: coverage`` the best by probability plus :func:`coverage_penalty`."""
    check_decode(cfg, text_encoder)
    prefix = model.prefix(batch)
    embeds = prefix.embeddings  # (B, L_p, h)
    if cfg.method == "sample":
        return texts_of(model, sample(model, embeds, cfg.max_tokens, cfg.top_p, cfg.temperature))
    greedy_steps = {"greedy": cfg.max_tokens, "beam": 0, "hybrid": cfg.greedy_tokens}[cfg.method]
    tokens, scores = search(model, embeds, cfg, greedy_steps, cfg.beam_size)  # (B, w, T), (B, w)
    if cfg.rerank == "none":
        return texts_of(model, tokens[:, 0])
    batch_size, width = tokens.shape[:2]
    candidates = texts_of(model, tokens.flatten(0, 1))  # (B·w) captions, image by image
    if cfg.rerank == "coverage":
        if prefix.region_slots is None:
            raise ValueError("evaluate.decode.rerank coverage needs region tokens (model.prefix_regions tokens)")
        scores = scores + cfg.coverage_weight * coverage_penalty(model, embeds, prefix.region_slots, tokens,
                                                                 cfg.coverage_heads)
    else:
        texts = torch.from_numpy(text_encoder(candidates)).to(embeds.device)
        scores = (F.normalize(texts.float(), dim=-1).view(batch_size, width, -1)
                  @ F.normalize(batch.clip.float(), dim=-1)[:, :, None]).squeeze(-1)  # (B, w)
    return [candidates[b * width + j] for b, j in enumerate(scores.argmax(dim=-1).tolist())]


def coverage_penalty(model: Captioner, embeds: torch.Tensor, slots: torch.Tensor, tokens: torch.Tensor,
                     heads: int) -> torch.Tensor:
    """GNMT's coverage penalty (Wu et al. 2016) over the image's regions instead of source words:
    Σ_regions log min(attention mass the caption put on the region, 1), the mass summed over
    the caption's tokens and averaged over the first ``heads`` heads of GPT-2's last layer
    (those the grounding loss taught to look at the object being named). A caption that leaves
    a detected object unnamed scores lower. embeds (B, L_p, h), slots (B, S) node per region
    slot (-1 empty), tokens (B, w, T) → (B, w), ≤ 0."""
    batch, width, _ = tokens.shape
    if not 0 < heads <= model.gpt2.config.n_head:
        raise ValueError(f"evaluate.decode.coverage_heads: {heads} is not within 1..{model.gpt2.config.n_head}")
    flat = tokens.flatten(0, 1)  # (B·w, T)
    is_eos = (flat == model.tokenizer.eos_token_id).long()
    mask = (is_eos.cumsum(dim=1) - is_eos == 0).long()  # up to and including the first EOS
    _, attention = model.caption_forward(embeds.repeat_interleave(width, dim=0), flat, mask, return_attention=True)
    first = model.cfg.prefix_length
    on_slots = attention[:, :heads, :, first:first + slots.shape[1]] * mask[:, None, :, None]  # (B·w, heads, T, S)
    per_slot = on_slots.sum(dim=2).mean(dim=1)  # (B·w, S)
    nodes = slots.repeat_interleave(width, dim=0)  # (B·w, S); a region may fill several slots
    mass = torch.zeros(len(flat), int(slots.max()) + 2, device=flat.device)  # last column: empty slots
    mass.scatter_add_(1, torch.where(nodes >= 0, nodes, mass.shape[1] - 1), per_slot)
    present = torch.zeros_like(mass, dtype=torch.bool)
    present.scatter_(1, torch.where(nodes >= 0, nodes, mass.shape[1] - 1), nodes >= 0)
    penalty = (mass.clamp(1e-6, 1.0).log() * present).sum(dim=1)  # (B·w,)
    return penalty.view(batch, width)


def texts_of(model: Captioner, tokens: torch.Tensor) -> list[str]:
    """Token ids (B, T) → captions, each cut at its first EOS."""
    eos, texts = model.tokenizer.eos_token_id, []
    for ids in tokens.tolist():
        if eos in ids:
            ids = ids[: ids.index(eos)]
        texts.append(model.tokenizer.decode(ids, skip_special_tokens=True).strip())
    return texts


def caption_images(model: Captioner, dataset, cfg: DecodeConfig, batch_size: int, device: torch.device,
                   text_encoder: TextEncoder | None = None) -> list[str]:
    """Decode every item of an image dataset (``train.data.Images``), in order."""
    check_decode(cfg, text_encoder)
    model.eval().to(device)
    captions: list[str] = []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate):
        captions += decode(model, batch.to(device), cfg, text_encoder)
    return captions
