"""Self-critical sequence training (SCST, Rennie et al. 2017): the last stage of a captioner.

For each image, captions are sampled from the model; each sample's reward minus a baseline weighs
its log-probability: loss = -(r(sample) - b) · log p(sample). The baseline is the reward of the
greedy caption (Rennie et al.) or, with several samples per image, the mean reward of the image's
other samples (ruotianluo's "new SCST"). Two rewards (``train.scst_reward``):

- ``cider``: CIDEr-D of the caption against the image's training references, document
  frequencies from all training captions (:class:`CiderReward`); the standard last stage on COCO.
- ``clip``: the cosine between the image's cached CLIP embedding and the caption's CLIP text
  embedding (:class:`ClipReward`); needs no caption, so the semi-supervised stage 2 trains on
  the images whose captions are left unused.
"""
from __future__ import annotations

import contextlib
from typing import Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from train.cider import CiderD
from train.config import DecodeConfig
from train.data import Batch
from train.decode import TextEncoder, sample, search, texts_of
from train.model import Captioner


class Reward(Protocol):
    def __call__(self, batch: Batch, captions: list[str], repeats: int) -> torch.Tensor:
        """Rewards (B·repeats,) of captions given image by image, ``repeats`` per image of the batch."""


class ClipReward:
    """Cosine between each image's CLIP embedding and its caption's CLIP text embedding."""

    def __init__(self, text_encoder: TextEncoder):
        self.text_encoder = text_encoder

    def __call__(self, batch: Batch, captions: list[str], repeats: int) -> torch.Tensor:
        image = batch.clip.repeat_interleave(repeats, dim=0)  # (B·r, d)
        texts = torch.from_numpy(self.text_encoder(captions)).to(image.device)
        return F.cosine_similarity(image.float(), texts.float(), dim=-1)


class CiderReward:
    """CIDEr-D of each caption against its image's references (``references[k]`` for manifest index
    ``images[k]``), document frequencies from all of them. Captions and references are compared as
    lowercased words split on spaces: the model writes the normalised form it was trained on."""

    def __init__(self, images: Sequence[int], references: Sequence[Sequence[str]]):
        self.position = {index: k for k, index in enumerate(images)}
        self.scorer = CiderD.from_corpus([[r.lower() for r in refs] for refs in references])

    def __call__(self, batch: Batch, captions: list[str], repeats: int) -> torch.Tensor:
        ids = [self.position[i] for i in batch.index.repeat_interleave(repeats).tolist()]
        scores = self.scorer.scores_by_id([c.lower() for c in captions], ids)
        return torch.as_tensor(scores, dtype=torch.float32, device=batch.index.device)


def caption_mask(tokens: torch.Tensor, eos: int) -> torch.Tensor:
    """1 for every token up to and including a caption's first EOS, else 0: (B, T)."""
    ended_before = torch.cumsum((tokens == eos).long(), dim=1) - (tokens == eos).long()  # EOS seen before t
    return (ended_before == 0).long()


@contextlib.contextmanager
def evaluating(model: nn.Module):
    """Sample and decode the baseline without dropout; the gradient pass runs in the caller's mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def check_sampling(samples: int, baseline: str) -> None:
    """At least one sample per image; the mean baseline (of an image's other samples) needs two."""
    if samples < 1 or (baseline == "mean" and samples < 2):
        raise ValueError(f"train.scst_samples: {samples} (at least 1; with train.scst_baseline mean, the mean of "
                         "an image's other samples, it needs at least 2)")


class SelfCritical(nn.Module):
    """The SCST loss as a module's forward (so DDP synchronises its gradients)."""

    def __init__(self, model: Captioner, reward: Reward, max_tokens: int, samples: int = 1,
                 baseline: str = "greedy"):
        super().__init__()
        check_sampling(samples, baseline)
        self.model, self.reward, self.max_tokens = model, reward, max_tokens
        self.samples, self.baseline = samples, baseline

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        embeds = self.model.prefix(batch).embeddings  # (B, L_p, h), with gradient
        sampled, reward, baseline = self.rollout(batch, embeds.detach())
        loss = -((reward - baseline) * self.log_prob(embeds, sampled)).mean()
        return {"total": loss, "reward": reward.mean(), "reward_baseline": baseline.mean()}

    @torch.no_grad()
    def rollout(self, batch: Batch,
                embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``scst_samples`` captions per image drawn after the prefix (B, L_p, h), image by image
        (B·n, T), with their rewards and baselines (B·n,)."""
        with evaluating(self.model):
            sampled = sample(self.model, embeds.repeat_interleave(self.samples, dim=0), self.max_tokens)
            reward = self.reward(batch, texts_of(self.model, sampled), self.samples)
            return sampled, reward, self.baseline_of(batch, embeds, reward)

    def log_prob(self, embeds: torch.Tensor, sampled: torch.Tensor) -> torch.Tensor:
        """log p(caption) of each sample (B·n,) under the model, after its image's prefix (B, L_p, h)."""
        mask = caption_mask(sampled, self.model.tokenizer.eos_token_id)
        logits = self.model.caption_logits(embeds.repeat_interleave(self.samples, dim=0), sampled, mask)  # (B·n, T, V)
        token_logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, sampled[..., None]).squeeze(-1)
        return (token_logp * mask).sum(dim=1)

    def baseline_of(self, batch: Batch, embeds: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
        """Each sample's baseline (B·n,): the greedy caption's reward, or the image's other samples' mean."""
        n = self.samples
        if self.baseline == "mean":
            per_image = reward.view(-1, n)  # (B, n)
            return ((per_image.sum(dim=1, keepdim=True) - per_image) / (n - 1)).flatten()
        greedy, _ = search(self.model, embeds, DecodeConfig(max_tokens=self.max_tokens), self.max_tokens, 1)
        return self.reward(batch, texts_of(self.model, greedy[:, 0]), 1).repeat_interleave(n)
