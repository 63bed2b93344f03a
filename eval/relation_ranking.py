"""Relation ranking: does the captioner know where objects are relative to each other?

Captions state a relation only when decoding picks that phrasing, which a captioner trained on
five phrasings rarely does (listing the objects is likelier), so the relation accuracy of
generated captions rests on a handful of statements. This probe asks every model the same
questions, in the manner of the ARO benchmark's VG-Relation test: for each ordered pair of objects
(a, b) of a demo-world image, the four captions "a <a> <relation> a <b> <scene>" (the world's own
relation phrasing, sizes included) are scored by the captioner's log-likelihood given the image,
and the pair counts as right when the true relation's caption is the likeliest.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from train.data import collate, pad_tokens, tokenize_captions
from train.model import Captioner
from world.grammar import RELATIONS, SCENE_PHRASES, phrase, relation, truth_objects


def relation_questions(extra: Mapping[str, Any]) -> list[tuple[list[str], int]]:
    """Per ordered pair of the image's objects: the four candidate captions (in RELATIONS order)
    and the index of the true one. An image with one object asks nothing."""
    objects, where = truth_objects(extra), SCENE_PHRASES[extra["scene"]]
    return [([f"{phrase(a, True)} {rel} {phrase(b, True)} {where}" for rel in RELATIONS], RELATIONS.index(relation(a, b)))
            for i, a in enumerate(objects) for j, b in enumerate(objects) if i != j]


@torch.no_grad()
def caption_log_likelihoods(model: Captioner, prefix: torch.Tensor, texts: Sequence[str], max_tokens: int) -> torch.Tensor:
    """log p(text | prefix) of each text (EOS included, as in training): prefix (n, L_p, h) → (n,)."""
    flat, offsets = tokenize_captions(model.tokenizer, list(texts), max_tokens)
    tokens, mask = pad_tokens(np.split(flat, offsets[1:-1]), model.tokenizer.pad_token_id)  # (n, T)
    tokens, mask = tokens.to(prefix.device), mask.to(prefix.device)
    logp = model.caption_logits(prefix, tokens, mask).log_softmax(dim=-1)  # (n, T, V)
    return (logp.gather(-1, tokens[..., None])[..., 0] * mask).sum(dim=1)


@torch.no_grad()
def relation_ranking(model: Captioner, dataset, extras: Sequence[Mapping[str, Any]], batch_size: int,
                     max_tokens: int, device: torch.device) -> dict[str, float]:
    """Share of object pairs whose true relation the captioner finds likeliest, over the images of
    ``dataset`` (``train.data.Images``; ``extras``: their ground truth, in the same order). All
    questions of a batch of images are scored in one forward pass."""
    model.eval().to(device)
    right = pairs = 0
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    for start, batch in zip(range(0, len(dataset), batch_size), loader):
        questions = [relation_questions(extra) for extra in extras[start:start + len(batch.clip)]]
        asked = torch.tensor([len(q) * len(RELATIONS) for q in questions], device=device)  # captions per image
        if not asked.any():
            continue
        prefix = model.prefix(batch.to(device)).embeddings  # (B, L_p, h)
        texts = [text for image in questions for candidates, _ in image for text in candidates]
        scores = caption_log_likelihoods(model, prefix.repeat_interleave(asked, dim=0), texts, max_tokens)
        truth = torch.tensor([t for image in questions for _, t in image], device=device)
        right += int((scores.view(-1, len(RELATIONS)).argmax(dim=1) == truth).sum())
        pairs += len(truth)
    return {"world/relation_ranking": right / pairs if pairs else float("nan"), "world/relation_pairs": pairs}
