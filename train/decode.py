"""Caption generation from the prefix: greedy, beam search, and the paper's hybrid (greedy for
the first n tokens, then beam search), on top of transformers' ``generate`` and its KV cache."""
from __future__ import annotations

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


def _generate(model: Captioner, embeds: torch.Tensor, beams: int, max_new: int, cfg: DecodeConfig) -> torch.Tensor:
    tok = model.tokenizer
    return model.gpt2.generate(
        inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device),
        max_new_tokens=max_new, num_beams=beams, do_sample=False, length_penalty=cfg.length_penalty,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, early_stopping=True if beams > 1 else False,
    )  # (B, T_new): transformers returns only the new tokens for inputs_embeds


@torch.no_grad()
def decode(model: Captioner, batch: dict[str, torch.Tensor], cfg: DecodeConfig) -> list[str]:
    if cfg.method not in METHODS:
        raise ValueError(f"evaluate.method: unknown decoding {cfg.method!r}; known: {METHODS}")
    embeds = model.prefix(batch).embeddings  # (B, L_p, h)
    eos = model.tokenizer.eos_token_id
    if cfg.method == "greedy":
        tokens = _generate(model, embeds, 1, cfg.max_tokens, cfg)
    elif cfg.method == "beam":
        tokens = _generate(model, embeds, cfg.beam_size, cfg.max_tokens, cfg)
    else:
        head = _generate(model, embeds, 1, cfg.greedy_tokens, cfg)  # (B, n)
        # a caption that already ended stays ended: its EOS is kept and the beam adds nothing after it
        embeds = torch.cat([embeds, model.gpt2.transformer.wte(head)], dim=1)
        tail = _generate(model, embeds, cfg.beam_size, cfg.max_tokens - head.shape[1], cfg)
        tokens = torch.cat([head, tail], dim=1)
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
