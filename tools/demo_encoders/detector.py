"""The tiny torchvision Faster R-CNN, trained on the world's ground-truth boxes (labels: shapes)."""
from __future__ import annotations

import logging

import torch
from safetensors.torch import save_file
from torchvision.models.detection import FasterRCNN
from torchvision.ops import box_iou

from features.config import DetectorConfig
from features.detector_torchvision import build_detector

log = logging.getLogger(__name__)


def train_detector(cfg: DetectorConfig, num_classes: int, images: list[torch.Tensor],
                   targets: list[dict[str, torch.Tensor]], epochs: int, seed: int) -> FasterRCNN:
    """``images``: (3, H, W) floats in [0, 1]; ``targets``: torchvision's boxes/labels dicts."""
    torch.manual_seed(seed)
    model = build_detector(cfg, num_classes)
    model.rpn.batch_size_per_image = 64  # fewer sampled anchors/RoIs: the scenes are simple
    model.roi_heads.fg_bg_sampler.batch_size_per_image = 64
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=1e-4)
    batch = 16
    steps = epochs * ((len(images) + batch - 1) // batch)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.02, total_steps=steps, pct_start=0.1)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(images)).tolist()
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            losses = model([images[i] for i in idx], [targets[i] for i in idx])
            loss = sum(losses.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        log.info("detector epoch %d: loss %.3f (%s)", epoch, loss.item(),
                 ", ".join(f"{k} {v.item():.3f}" for k, v in losses.items()))
    return model.eval()


@torch.no_grad()
def box_recall(model: FasterRCNN, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]],
               iou: float = 0.5) -> tuple[float, float]:
    """(recall of ground-truth boxes by any detection at IoU ≥ iou, share of those with the right label)."""
    found = right = total = 0
    for start in range(0, len(images), 16):
        outputs = model(images[start:start + 16])
        for out, target in zip(outputs, targets[start:start + 16]):
            total += len(target["boxes"])
            if len(out["boxes"]) == 0:
                continue
            overlaps = box_iou(target["boxes"], out["boxes"])
            best, which = overlaps.max(dim=1)
            hit = best >= iou
            found += int(hit.sum())
            right += int((hit & (out["labels"][which] == target["labels"])).sum())
    return found / max(total, 1), right / max(found, 1)


def save_detector(model: FasterRCNN, path) -> None:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
