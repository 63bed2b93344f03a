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
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 with loss scaling, CUDA only)
    compile: bool = False  # torch.compile GPT-2 (the bulk of a step)
    seed: int = 0
    val_images: int = 200  # validation images decoded (greedy) after each epoch; 0 = all
    loss: LossConfig = field(default_factory=LossConfig)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [kind, keys.tolist(), pos, has_gauss, cached]}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomically: a checkpoint that exists is complete. Holds only tensors and plain data, so it
    loads with ``torch.load(weights_only=True)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, fingerprint: str) -> dict | None:
    """The checkpoint of an interrupted run of the same configuration, else None."""
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != fingerprint:
        log.info("%s belongs to another configuration: starting afresh", path)
        return None
    return state


def _mixed_precision(precision: str, device: torch.device):
    """(autocast context, gradient scaler) for ``train.precision``; the scaler only acts for fp16."""
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise ValueError(f"train.precision: unknown {precision!r}; known: {sorted(dtypes)}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("train.precision: fp16 needs a CUDA device (use bf16 on CPU)")
    dtype = dtypes[precision]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    return autocast, torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def set_phase(model: Captioner, phase: int) -> None:
    """Phase 1 freezes GPT-2; phase 2 trains everything."""
    model.gpt2.requires_grad_(phase == 2)


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def train(model: Captioner, train_set, cfg: TrainConfig, out_dir: Path, live_dir: Path,
          scorer: Callable[[Captioner], dict[str, float]], score_key: str, device: torch.device,
          save_extra: dict | None = None, checkpoint: Path | None = None, fingerprint: str = "") -> dict[str, float]:
    """Train, validating with ``scorer`` after each epoch; the best epoch by ``score_key`` is
    saved to ``out_dir``, dvclive logs go to ``live_dir``. After every epoch the whole training
    state (weights, optimizer, schedule, RNG streams, best so far) goes to ``checkpoint``; a run
    with the same ``fingerprint`` (its configuration and code) resumes from there and ends exactly
    as an uninterrupted one. A finished run deletes its checkpoint. Returns the best validation
    scores."""
    seed_everything(cfg.seed)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=cfg.lr_decay)
    best: dict[str, float] = {score_key: -math.inf}
    start = 0
    state = load_checkpoint(checkpoint, fingerprint) if checkpoint else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        best, start = state["best"], state["epoch"] + 1
        log.info("resuming after epoch %d from %s", state["epoch"], checkpoint)
    autocast, scaler = _mixed_precision(cfg.precision, device)
    if cfg.compile:
        model.gpt2.forward = torch.compile(model.gpt2.forward)
    collate_fn = partial(collate, pad_id=model.tokenizer.pad_token_id)
    epochs = [1] * cfg.phase1_epochs + [2] * cfg.phase2_epochs
    with Live(str(live_dir), resume=state is not None, dvcyaml=False, save_dvc_exp=False) as live:
        for epoch in range(start, len(epochs)):
            phase = epochs[epoch]
            set_phase(model, phase)
            model.train()
            # the shuffle depends on (seed, epoch) only, so a resumed run sees the same batches
            order = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, generator=order,
                                num_workers=cfg.num_workers, collate_fn=collate_fn)
            sums: dict[str, float] = {}
            for batch in tqdm(loader, desc=f"epoch {epoch} (phase {phase})", unit="batch", leave=False):
                with autocast:
                    parts = total_loss(model, _to(batch, device), cfg.loss)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(parts["total"]).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v.item()
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            model.eval()
            scores = scorer(model)
            # an epoch's rows are logged together, once it is complete, at step = epoch, so a
            # resumed run adds none twice
            live.step = epoch
            live.log_metric("train/lr", lr)
            for k, v in sums.items():
                live.log_metric(f"train/loss_{k}", v / len(loader))
            for k, v in scores.items():
                live.log_metric(f"val/{k}", v)
            log.info("epoch %d phase %d: loss %.3f, val %s", epoch, phase, sums["total"] / len(loader), scores)
            if scores[score_key] > best[score_key]:
                best = dict(scores, epoch=epoch)
                model.save(out_dir, extra=save_extra)
            live.next_step()
            if checkpoint:
                save_checkpoint(checkpoint, {
                    "fingerprint": fingerprint, "epoch": epoch, "best": best, "rng": _rng_state(),
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict()})
    if checkpoint:
        checkpoint.unlink(missing_ok=True)  # finished: a later run (dvc repro -f) starts afresh
    return best
