"""Stage 2 of the two-stage semi-supervised captioner: self-critical sequence training (SCST) on
images whose captions are not used, rewarded by CLIP image-text similarity.

For each image a caption is sampled from the model and one is decoded greedily; the sample's
reward minus the greedy caption's reward (the self-critical baseline) weighs the sample's
log-probability: loss = -(r(sample) - r(greedy)) · log p(sample). Rewards are the cosine between
the image's cached CLIP embedding and the caption's CLIP text embedding (the frozen text tower).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from train.config import DecodeConfig
from train.decode import TextEncoder, search, texts_of
from train.model import Captioner


@torch.no_grad()
def sample(model: Captioner, embeds: torch.Tensor, max_tokens: int) -> torch.Tensor:
    """Token ids (B, T) drawn one at a time from the model's distribution after the prefix
    embeddings (B, L_p, h), over GPT-2's key/value cache; EOS repeats after a caption ends."""
    eos = model.tokenizer.eos_token_id
    out = model.gpt2(inputs_embeds=embeds, use_cache=True)
    done = torch.zeros(embeds.shape[0], dtype=torch.bool, device=embeds.device)
    steps = []
    for _ in range(max_tokens):
        words = torch.multinomial(torch.softmax(out.logits[:, -1].float(), dim=-1), 1).squeeze(1)  # (B,)
        words = words.masked_fill(done, eos)
        steps.append(words)
        done |= words == eos
        if bool(done.all()):
            break
        out = model.gpt2(input_ids=words[:, None], cache=out.cache, use_cache=True)
    return torch.stack(steps, dim=1)


def caption_mask(tokens: torch.Tensor, eos: int) -> torch.Tensor:
    """1 for every token up to and including a caption's first EOS, else 0: (B, T)."""
    ended_before = torch.cumsum((tokens == eos).long(), dim=1) - (tokens == eos).long()  # EOS seen before t
    return (ended_before == 0).long()


def clip_reward(image: torch.Tensor, captions: list[str], text_encoder: TextEncoder) -> torch.Tensor:
    """Cosine between each image's CLIP embedding (B, d) and its caption's CLIP text embedding: (B,)."""
    texts = torch.from_numpy(text_encoder(captions)).to(image.device)
    return F.cosine_similarity(image.float(), texts.float(), dim=-1)


@contextlib.contextmanager
def evaluating(model: nn.Module):
    """Sample and decode the baseline without dropout; the gradient pass runs in the caller's mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class SelfCritical(nn.Module):
    """The SCST loss as a module's forward (so DDP synchronises its gradients). The batch needs
    only the image features: no caption of these images is read."""

    def __init__(self, model: Captioner, text_encoder: TextEncoder, max_tokens: int):
        super().__init__()
        self.model, self.text_encoder, self.max_tokens = model, text_encoder, max_tokens

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        embeds = self.model.prefix(batch).embeddings  # (B, L_p, h), with gradient
        with evaluating(self.model):
            sampled = sample(self.model, embeds.detach(), self.max_tokens)  # (B, T)
            greedy, _ = search(self.model, embeds.detach(), DecodeConfig(max_tokens=self.max_tokens),
                               self.max_tokens, 1)
        eos = self.model.tokenizer.eos_token_id
        reward = clip_reward(batch["clip"], texts_of(self.model, sampled), self.text_encoder)  # (B,)
        baseline = clip_reward(batch["clip"], texts_of(self.model, greedy[:, 0]), self.text_encoder)
        mask = caption_mask(sampled, eos)
        logits = self.model.caption_logits(embeds, sampled, mask)  # (B, T, V)
        token_logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, sampled[..., None]).squeeze(-1)
        logp = (token_logp * mask).sum(dim=1)  # (B,) log p(sample)
        loss = -((reward - baseline) * logp).mean()
        return {"total": loss, "reward": reward.mean(), "reward_greedy": baseline.mean()}
