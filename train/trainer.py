"""The training loop: two phases (docs/method.md §8), AdamW with a per-epoch ×γ decay, dvclive logs,
and the best model (by the validation scorer the caller hands in) saved as one folder."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import random
from dataclasses import asdict, dataclass, is_dataclass, replace
from enum import Enum
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from dvclive import Live
from features.config import choices
from features.precision import autocast
from train.config import TrainConfig
from train.data import Batch, Images, collate
from train.distributed import GlobalBatches, World, barrier, broadcast, gather, mean_over_ranks
from train.losses import total_loss
from train.model import Captioner
from train.scst import Reward, SelfCritical, check_sampling

log = logging.getLogger(__name__)


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


def _atomically(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` a temporary file beside ``path``, then rename it: a kill leaves the old file or
    the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    tmp.replace(path)


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomically: a checkpoint that exists is complete. Holds only tensors and plain data, so it
    loads with ``torch.load(weights_only=True)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomically(path, partial(torch.save, state))


# Part of every resume fingerprint: bump it when a code change gives a checkpoint's state another
# meaning (parameters renamed or reshaped, the optimizer or schedule changed, the data read
# otherwise), so that a run never resumes from a checkpoint of the code before. Edits that keep
# the meaning (docstrings, refactors, logging) keep a long run's checkpoint.
CHECKPOINT_VERSION = 1


def fingerprint(*decides: Any) -> str:
    """What a checkpoint's meaning depends on, hashed: ``decides`` (the configurations, the data:
    JSON-able, dataclasses as their fields) and :data:`CHECKPOINT_VERSION`. A run resumes only a
    checkpoint of the same fingerprint."""
    plain = [asdict(d) if is_dataclass(d) else d for d in decides]
    return hashlib.sha256(json.dumps([*plain, CHECKPOINT_VERSION], sort_keys=True).encode()).hexdigest()


def load_checkpoint(path: Path, fingerprint: str, world_size: int = 1) -> dict | None:
    """The checkpoint of an interrupted run of the same configuration and world size, else None."""
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if (state.get("fingerprint"), state.get("world_size")) != (fingerprint, world_size):
        log.info("%s belongs to another configuration or number of processes: starting afresh", path)
        return None
    return state


def mixed_precision(precision: str, device: torch.device):
    """(autocast context, gradient scaler) for ``train.precision``; the scaler only acts for fp16."""
    context = autocast(precision, device, key="train.precision")
    return context, torch.amp.GradScaler(device.type, enabled=precision == "fp16")


class Phase(Enum):
    """The training phases, in their order (docs/method.md §8); the value is what logs call them."""

    MAPPING = 1  # GPT-2 (and CLIP's tail, if fine-tuned) frozen: the mapping and guidance learn to prompt it
    FULL = 2  # everything trains
    SCST = 3  # self-critical sequence training after phase 2 (train.scst_epochs)


SCST_REWARDS = choices(TrainConfig, "scst_reward")


def set_phase(model: Captioner, phase: Phase) -> None:
    """Phase 1 freezes GPT-2 (and CLIP's tail, if fine-tuned); phase 2 and SCST train everything."""
    model.gpt2.requires_grad_(phase is not Phase.MAPPING)
    if model.clip_tail is not None:
        model.clip_tail.requires_grad_(phase is not Phase.MAPPING)


@dataclass
class SelfCriticalStage:
    """What the SCST epochs train on: images (the training images for the CIDEr reward, the ones
    left unlabelled for the CLIP reward) and the reward of a caption."""

    images: Images
    reward: Reward


MODES = ("supervised", "text_only")


class Objective(nn.Module):
    """The training loss as a module's forward: DDP synchronises gradients only for computations
    that run through the forward of the module it wraps. In ``text_only`` mode the image never
    enters: the caption's own CLIP text embedding, normalised and with Gaussian noise added (to
    bridge the image/text gap), takes the CLIP image embedding's place."""

    def __init__(self, model: Captioner, cfg: TrainConfig):
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        if self.cfg.mode == "text_only":
            text = F.normalize(batch.text, dim=-1)
            batch = replace(batch, clip=text + math.sqrt(self.cfg.text_noise) * torch.randn_like(text))
        return total_loss(self.model, batch, self.cfg.loss)


def check_mode(model: Captioner, cfg: TrainConfig, scst: SelfCriticalStage | None = None) -> None:
    if cfg.mode not in MODES:
        raise ValueError(f"train.mode: unknown {cfg.mode!r}; known: {MODES}")
    if cfg.mode == "text_only" and (model.cfg.regions or not model.cfg.normalize_clip or model.clip_tail):
        raise ValueError("train.mode text_only trains without images: it needs model.regions: false, "
                         "model.normalize_clip: true and no CLIP fine-tuning")
    if model.prefix_tokens + cfg.max_tokens > model.gpt2.config.n_positions:
        raise ValueError(f"the prefix (model.prefix_length + region tokens, twice with model.spatial_tokens) + train.max_tokens = "
                         f"{model.prefix_tokens + cfg.max_tokens} "
                         f"exceeds GPT-2's {model.gpt2.config.n_positions} positions")
    if not 0 < cfg.labelled_fraction <= 1:
        raise ValueError(f"train.labelled_fraction: {cfg.labelled_fraction} is not in (0, 1]")
    if cfg.scst_epochs:
        check_scst(cfg, scst)


def check_scst(cfg: TrainConfig, scst: SelfCriticalStage | None) -> None:
    if cfg.scst_reward not in SCST_REWARDS:
        raise ValueError(f"train.scst_reward: unknown {cfg.scst_reward!r}; known: {SCST_REWARDS}")
    if cfg.mode != "supervised":
        raise ValueError("train.scst_epochs: SCST follows supervised training (train.mode supervised)")
    if cfg.scst_reward == "clip" and cfg.labelled_fraction == 1:
        raise ValueError("train.scst_reward clip trains on the images left unlabelled: it needs "
                         "train.labelled_fraction < 1 (the cider reward trains on the labelled ones)")
    check_sampling(cfg.scst_samples, cfg.scst_baseline)
    if scst is None:
        raise ValueError("train.scst_epochs: no images and reward were given for the SCST epochs")


def _objective(model: Captioner, cfg: TrainConfig, world: World, device: torch.device, phase: Phase,
               scst: SelfCriticalStage | None) -> nn.Module:
    """Built anew at each phase: DDP registers the parameters that require grad at construction."""
    objective = (SelfCritical(model, scst.reward, cfg.max_tokens, cfg.scst_samples, cfg.scst_baseline)
                 if phase is Phase.SCST else Objective(model, cfg))
    if world.size == 1:
        return objective
    return DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)


def _batches(data, cfg: TrainConfig, epoch: int, world: World) -> GlobalBatches:
    """Shard-aware batches over the feature store (``train.data.CaptionPairs``, ``Images``), so a
    batch's shards stay open in the readers; a plain shuffle for items held in memory."""
    features = getattr(data, "features", None)
    if features is None:
        return GlobalBatches(len(data), cfg.batch_size, cfg.seed, epoch, world)
    return GlobalBatches(len(data), cfg.batch_size, cfg.seed, epoch, world, data.item_shards(),
                         window=features.max_open_shards // 2)


class NonFiniteError(ValueError):
    """Training met a NaN/Inf loss or gradient: the message names the epoch, step and images."""


MAX_SKIPPED_STEPS = 20  # fp16: consecutive overflowing steps the loss scaler may skip (2^16 scale → 2^-4)


def train_epoch(objective: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, scaler, autocast,
                 cfg: TrainConfig, device: torch.device, desc: str,
                 image_ids: Sequence[str] = ()) -> dict[str, float]:
    """One pass over the loader; returns the mean of each loss part. A non-finite loss, or a
    non-finite gradient that fp16's loss scaling does not explain, stops training with
    :class:`NonFiniteError` before the optimizer steps on it."""
    sums: dict[str, float] = {}
    skipped = 0
    for step, batch in enumerate(tqdm(loader, desc=desc, unit="batch", leave=False)):
        with autocast:
            parts = objective(batch.to(device))
        if not torch.isfinite(parts["total"]).item():
            raise NonFiniteError(_nonfinite(f"loss {parts['total'].item()}", desc, step, batch, image_ids))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(parts["total"]).backward()
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(objective.parameters(), cfg.grad_clip)  # the same on every rank
        skipped = 0 if torch.isfinite(norm).item() else skipped + 1
        if skipped and (not scaler.is_enabled() or skipped > MAX_SKIPPED_STEPS):
            raise NonFiniteError(_nonfinite(f"gradient norm {norm.item()}", desc, step, batch, image_ids))
        scaler.step(optimizer)  # fp16: skips a step whose gradients overflowed
        scaler.update()
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v.item()
    return {k: v / len(loader) for k, v in sums.items()}


def _nonfinite(what: str, desc: str, step: int, batch: Batch, image_ids: Sequence[str]) -> str:
    indices = batch.index.tolist()
    names = [image_ids[i] for i in indices] if image_ids else [str(i) for i in indices]
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    return (f"{desc}, step {step}: {what} with images {shown}; no model is written from here on — "
            "run graphcap-verify on the feature store, or lower train.lr")


def train(model: Captioner, train_set, cfg: TrainConfig, out_dir: Path, live_dir: Path,
          scorer: Callable[[Captioner], dict[str, float]], score_key: str, device: torch.device,
          save_extra: dict | None = None, checkpoint: Path | None = None, fingerprint: str = "",
          world: World = World(), scst: SelfCriticalStage | None = None) -> dict[str, float]:
    """Train, validating with ``scorer`` after each epoch; the best epoch by ``score_key`` is
    saved to ``out_dir``, dvclive logs go to ``live_dir``. After every epoch the whole training
    state (weights, optimizer, schedule, RNG streams of every rank, best so far) goes to
    ``checkpoint``; a run with the same ``fingerprint`` (its configuration and code) and world size
    resumes from there and ends exactly as an uninterrupted one. A finished run deletes its
    checkpoint. Under torchrun (``world`` from :func:`train.distributed.process_group`) each rank
    trains on its share of every batch with DDP, and rank 0 alone validates, logs and writes.
    With ``train.scst_epochs`` the SCST epochs on ``scst``'s images follow phase 2, and the saved
    model is the best of those epochs (stage 2's result, not stage 1's). Returns the best
    validation scores."""
    check_mode(model, cfg, scst)
    seed_everything(cfg.seed + 1000 * world.rank)  # rank 0 draws what a one-process run draws
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=cfg.lr_decay)
    best, start = _resume(checkpoint, fingerprint, world, model, optimizer, scheduler, score_key)
    autocast, scaler = mixed_precision(cfg.precision, device)
    if cfg.compile:
        model.gpt2.forward = torch.compile(model.gpt2.forward)
    phases = [Phase.MAPPING] * cfg.phase1_epochs + [Phase.FULL] * cfg.phase2_epochs + [Phase.SCST] * cfg.scst_epochs
    if start and world.is_main:
        _forget_logged_epochs(live_dir, start)
    live_or_none = (Live(str(live_dir), resume=start > 0, dvcyaml=False, save_dvc_exp=False)
                    if world.is_main else contextlib.nullcontext())
    with live_or_none as live:
        for epoch in range(start, len(phases)):
            phase = phases[epoch]
            if phase is Phase.SCST and (epoch == 0 or phases[epoch - 1] is not Phase.SCST):  # stage 2: its own rate and best
                for group in optimizer.param_groups:
                    group["lr"] = cfg.scst_lr
                best = {score_key: -math.inf}
            data = scst.images if phase is Phase.SCST else train_set
            losses = _train_one_epoch(model, data, optimizer, (autocast, scaler), cfg, device, world, epoch, phase,
                                      scst)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            model.eval()
            scores = broadcast(scorer(model) if world.is_main else None, world)
            if scores[score_key] > best[score_key]:
                best = dict(scores, epoch=epoch)
                if world.is_main:
                    model.save(out_dir, extra=save_extra)
            rng = gather(_rng_state(), world)
            if world.is_main:
                _log_epoch(live, epoch, lr, losses, scores)
                if checkpoint:
                    save_checkpoint(checkpoint, {
                        "fingerprint": fingerprint, "epoch": epoch, "best": best, "rng": rng, "world_size": world.size,
                        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict()})
            barrier(world)  # no rank starts the next epoch before the checkpoint is complete
    if checkpoint and world.is_main:
        checkpoint.unlink(missing_ok=True)  # finished: a later run (dvc repro -f) starts afresh
    return best


def _resume(checkpoint: Path | None, fingerprint: str, world: World, model: Captioner,
            optimizer: torch.optim.Optimizer, scheduler, score_key: str) -> tuple[dict[str, float], int]:
    """(best scores so far, first epoch to run): restored from ``checkpoint`` when it was made by
    this configuration, code and world size (weights, optimizer, schedule, this rank's RNG)."""
    state = load_checkpoint(checkpoint, fingerprint, world.size) if checkpoint else None
    if state is None:
        return {score_key: -math.inf}, 0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"][world.rank])
    log.info("resuming after epoch %d from %s", state["epoch"], checkpoint)
    return state["best"], state["epoch"] + 1


def _train_one_epoch(model: Captioner, data, optimizer: torch.optim.Optimizer, precision: tuple, cfg: TrainConfig,
                     device: torch.device, world: World, epoch: int, phase: Phase,
                     scst: SelfCriticalStage | None) -> dict[str, float]:
    """One epoch of ``phase`` over ``data``; its mean losses over every rank's batches."""
    set_phase(model, phase)
    model.train()
    loader = DataLoader(data, batch_sampler=_batches(data, cfg, epoch, world), num_workers=cfg.num_workers,
                        collate_fn=partial(collate, pad_id=model.tokenizer.pad_token_id))
    objective = _objective(model, cfg, world, device, phase, scst)
    autocast, scaler = precision
    features = getattr(data, "features", None)
    return mean_over_ranks(train_epoch(objective, loader, optimizer, scaler, autocast, cfg, device,
                                       f"epoch {epoch} (phase {phase.value})", getattr(features, "image_ids", ())), world)


def _forget_logged_epochs(live_dir: Path, start: int) -> None:
    """Drops the curves' rows of epochs from ``start`` on: a run killed after logging an epoch but
    before its checkpoint was complete redoes that epoch, and must not log it twice."""
    for curve in (live_dir / "plots/metrics").rglob("*.tsv"):
        header, *rows = curve.read_text().splitlines(keepends=True) or [""]
        kept = [row for row in rows if int(row.split("\t", 1)[0]) < start]
        if len(kept) < len(rows):
            _atomically(curve, lambda tmp: tmp.write_text(header + "".join(kept)))


def _log_epoch(live: Live, epoch: int, lr: float, losses: dict[str, float], scores: dict[str, float]) -> None:
    """An epoch's rows are logged together, once it is complete, at step = epoch (a resumed run
    first drops the rows of the epochs it redoes: :func:`_forget_logged_epochs`)."""
    live.step = epoch
    live.log_metric("train/lr", lr)
    for k, v in losses.items():
        live.log_metric(f"train/loss_{k}", v)
    for k, v in scores.items():
        live.log_metric(f"val/{k}", v)
    log.info("epoch %d: loss %.3f, val %s", epoch, losses["total"], scores)
    live.next_step()
