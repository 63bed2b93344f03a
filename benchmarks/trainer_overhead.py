"""The trainer's overhead at paper size, side by side in one run: a training step as the trainer
runs it (train.trainer.train_epoch fed by the HDF5 loader: reading, collation, the finite-loss and
gradient checks, clipping, the loss sums it logs) against the same model's pure forward + backward
+ AdamW step on batches already in memory, in fp32 and bf16. Goal: the trainer's step ≥ 90% of
the pure step's speed.

    python benchmarks/trainer_overhead.py [--batch 16] [--steps 4] [--workers 2] [--precisions fp32 bf16]

The model is presets/paper.yaml's (GPT-2 small, the GAT, guidance and mapping at the paper's
sizes, random weights built here), in phase 2 (GPT-2 trains too); the store holds paper-size
features (regions of two synthetic photos from the real R50-FPN, repeated). Checkpoints are
written once an epoch, not per step, and are left out.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.gpu_check import (  # noqa: E402
    CAPTIONS,
    FirstBatches,
    paper_params,
    paper_training,
    seconds,
    write_photos,
)
from features.precision import autocast  # noqa: E402
from pipeline import extract  # noqa: E402
from tools.paper_check import build_weights  # noqa: E402
from train.data import Batch  # noqa: E402
from train.trainer import Objective, mixed_precision, train_epoch  # noqa: E402


def pure_steps(objective: Objective, batches: list[Batch], optimizer: torch.optim.Optimizer, precision: str,
               device: torch.device) -> None:
    """Forward, backward and AdamW step on each batch (already on ``device``), nothing else."""
    for batch in batches:
        with autocast(precision, device, key="train.precision"):
            total = objective(batch)["total"]
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()


def measure(params, regions: dict, device: torch.device, steps: int, precisions: list[str], folder: Path) -> list[str]:
    model, fed, features = paper_training(params, regions, device, steps, folder)
    batches = list(FirstBatches(fed, steps))
    on_device = [b.to(device) for b in batches]
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.train.lr, weight_decay=params.train.weight_decay)
    lines = []
    for precision in precisions:
        cfg = replace(params.train, precision=precision)
        objective = Objective(model, cfg)
        context, scaler = mixed_precision(precision, device)
        pure_steps(objective, on_device[:1], optimizer, precision, device)  # warm-up
        t_pure = seconds(device, lambda: pure_steps(objective, on_device, optimizer, precision, device))
        loader = FirstBatches(fed, steps)
        t_trainer = seconds(device, lambda: train_epoch(objective, loader, optimizer, scaler, context, cfg, device,
                                                        precision))
        n = len(on_device)
        lines.append(f"{precision}: trainer {t_trainer / n:.3f} s/step, pure {t_pure / n:.3f} s/step -> "
                     f"trainer at {t_pure / t_trainer:.1%} of the pure step's speed")
    features.close()
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4, help="steps timed per row")
    parser.add_argument("--workers", type=int, default=2, help="train.num_workers of the trainer's loader")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="graphcap-trainer-overhead-") as tmp:
        work = Path(tmp)
        manifest = write_photos(work / "photos", 2)
        params = paper_params(build_weights(work / "weights", CAPTIONS * 20), work)
        params = replace(params, train=replace(params.train, batch_size=args.batch, num_workers=args.workers))
        regions, _ = extract.regions(params, manifest, device)(0, manifest["images"], lambda k: None)
        lines = measure(params, regions, device, args.steps, args.precisions, work / "store")
    print(f"\nTrainer overhead, paper preset, batch {args.batch}, {args.steps} steps, {device} "
          f"({torch.get_num_threads()} threads)")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
