"""The training loop: two phases (METHOD.md §8), AdamW with a per-epoch ×γ decay, dvclive logs,
and the best model (by the validation scorer the caller hands in) saved as one folder."""
from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from dvclive import Live
from torch.utils.data import DataLoader
from tqdm import tqdm

from train.data import collate
from train.losses import LossConfig, total_loss
from train.model import Captioner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Every key is documented in params.yaml (section ``train``)."""

    phase1_epochs: int = 5  # GPT-2 frozen: GAT, gating, fusion and mapping train
    phase2_epochs: int = 25  # everything trains jointly
    lr: float = 1e-4
    lr_decay: float = 0.9  # lr × lr_decay after every epoch
    weight_decay: float = 0.01
    batch_size: int = 64
    grad_clip: float = 1.0
    max_tokens: int = 40
    num_workers: int = 0
    seed: int = 0
    val_images: int = 200  # validation images decoded (greedy) after each epoch; 0 = all
    loss: LossConfig = field(default_factory=LossConfig)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_phase(model: Captioner, phase: int) -> None:
    """Phase 1 freezes GPT-2; phase 2 trains everything."""
    model.gpt2.requires_grad_(phase == 2)


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def train(model: Captioner, train_set, cfg: TrainConfig, out_dir: Path, live: Live,
          scorer: Callable[[Captioner], dict[str, float]], score_key: str, device: torch.device,
          save_extra: dict | None = None) -> dict[str, float]:
    """Train, validating with ``scorer`` after each epoch; the best epoch by ``score_key`` is
    saved to ``out_dir``. Returns the best validation scores."""
    seed_everything(cfg.seed)
    model.to(device)
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, generator=generator,
                        num_workers=cfg.num_workers, collate_fn=partial(collate, pad_id=model.tokenizer.pad_token_id))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=cfg.lr_decay)
    best: dict[str, float] = {score_key: -math.inf}
    epochs = [1] * cfg.phase1_epochs + [2] * cfg.phase2_epochs
    for epoch, phase in enumerate(epochs):
        set_phase(model, phase)
        model.train()
        sums: dict[str, float] = {}
        for batch in tqdm(loader, desc=f"epoch {epoch} (phase {phase})", unit="batch", leave=False):
            parts = total_loss(model, _to(batch, device), cfg.loss)
            optimizer.zero_grad(set_to_none=True)
            parts["total"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v.item()
        live.log_metric("train/lr", optimizer.param_groups[0]["lr"])
        scheduler.step()
        for k, v in sums.items():
            live.log_metric(f"train/loss_{k}", v / len(loader))
        model.eval()
        scores = scorer(model)
        for k, v in scores.items():
            live.log_metric(f"val/{k}", v)
        log.info("epoch %d phase %d: loss %.3f, val %s", epoch, phase, sums["total"] / len(loader), scores)
        if scores[score_key] > best[score_key]:
            best = dict(scores, epoch=epoch)
            model.save(out_dir, extra=save_extra)
        live.next_step()
    return best
