"""Detection, backend-independent: the detector's settings, what a detector returns for one
image, which detections become regions, and the padded arrays the store keeps.

Backends are registered by name in :data:`BACKENDS` (the module that implements each, imported
when first used, so an uninstalled detectron2 costs nothing). Contract of a backend module:

- ``load(cfg, device) -> (model, class names)``: the detector built as ``cfg`` says, with the
  weights of the local file ``cfg.weights``, in eval mode on ``device``;
- ``detect(model, images, cfg) -> list[Regions]``: for each image ((3, H, W) RGB floats in
  [0, 1]) its kept detections (:func:`select_regions`), best first, with boxes in the image's
  pixels and, as ``features``, the RoI features of those final boxes; an image without any
  detection gets one whole-image box with score 0 and label 0 (background), so every image has
  a node. Labels index the class-name list, 0 being the background.
"""
from __future__ import annotations

import importlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Literal

import numpy as np
import torch
from torch import nn
from torchvision.ops import nms

from features.weights import weights_identity

BACKENDS = {"torchvision": "features.detector_torchvision", "detectron2": "features.detector_detectron2"}

# Bump when a change to detection (this module or a backend) changes the features it produces:
# stored shards record it, and a resumed stage recomputes shards made by another version.
VERSION = 1


@dataclass(frozen=True)
class DetectorConfig:
    """Every key is documented in params.yaml (section ``regions``)."""

    backend: Literal["torchvision", "detectron2"] = "torchvision"  # torchvision | detectron2 (installed from source)
    arch: str = "fasterrcnn_resnet50_fpn"  # torchvision: a name in detector_torchvision.ARCHITECTURES
    d2_config: str = ""  # detectron2: a config file, or a model-zoo config name
    weights: str = ""  # local state_dict file (.pt/.pth/.safetensors)
    classes: str = ""  # JSON file: list of class names, index = label id, 0 = background
    min_size: int = 800
    max_size: int = 1333
    anchor_sizes: list[list[int]] = field(default_factory=lambda: [[32], [64], [128], [256], [512]])
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    roi_output_size: int = 7
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 100
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    class_agnostic_nms: float = 1.0  # IoU above which a box is dropped for a higher-scoring one of any class (1 = off)
    min_regions: int = 0  # top up to this many regions with lower-scoring detections
    min_regions_score: float = 0.01  # ... but none below this score
    max_regions: int = 36
    feature: Literal["box_head", "backbone_pool"] = "box_head"  # box_head (1024-d for R50-FPN) | backbone_pool (RoIAlign on C5: 2048-d)
    batch_size: int = 4

    def identity(self) -> dict:
        """What the stored regions depend on (provenance): weights hash and every setting that
        shapes the output (not the batch size)."""
        settings = {k: v for k, v in asdict(self).items() if k not in ("weights", "batch_size")}
        return {"regions.weights": weights_identity(self.weights), "regions.settings": settings,
                "regions.code_version": VERSION}

    @property
    def candidate_score_thresh(self) -> float:
        """The score down to which a backend keeps candidates: the top-up floor when
        ``min_regions`` asks for one; :func:`select_regions` then applies the thresholds."""
        return min(self.box_score_thresh, self.min_regions_score) if self.min_regions else self.box_score_thresh

    @property
    def candidates_per_image(self) -> int:
        return max(self.max_regions, self.min_regions)


@dataclass
class Regions:
    """Detections of one image, in original pixel coordinates. ``features``: (R, D)."""

    features: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def load_class_names(path: str) -> list[str]:
    names = json.loads(Path(path).read_text())
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(names) < 2:
        raise ValueError(f"{path}: expected a JSON list of class names (index 0 = background)")
    return names


def select_regions(scores: torch.Tensor, boxes: torch.Tensor, cfg: DetectorConfig) -> torch.Tensor:
    """Indices of the kept detections (``scores`` sorted descending, as both backends return
    them, ``boxes`` (R, 4)): those above ``box_score_thresh``, topped up to ``min_regions`` with
    the best of the rest, best first. Both detectors suppress overlaps within a class only, so
    one object can come back once per plausible class; ``class_agnostic_nms`` < 1 first keeps only
    the best-scoring of boxes overlapping above it, whatever their class (one region per object,
    as the bottom-up-attention extractor keeps one class per box)."""
    candidates = torch.arange(len(scores), device=scores.device)
    if cfg.class_agnostic_nms < 1.0:
        candidates = nms(boxes.float(), scores.float(), cfg.class_agnostic_nms).sort().values
    above = candidates[scores[candidates] >= cfg.box_score_thresh]
    if len(above) >= cfg.min_regions:
        return above[: cfg.max_regions]
    return candidates[: cfg.min_regions]


def backend(name: str) -> ModuleType:
    """The module implementing backend ``name`` (see the contract above)."""
    if name not in BACKENDS:
        raise ValueError(f"regions.backend: unknown {name!r} ({' | '.join(BACKENDS)})")
    return importlib.import_module(BACKENDS[name])


def load_detector(cfg: DetectorConfig, device: torch.device) -> tuple[nn.Module, list[str]]:
    """The configured backend's detector with its weights loaded from the local file."""
    if not cfg.weights:
        raise ValueError("regions.weights: a local detector state_dict file is required")
    return backend(cfg.backend).load(cfg, device)


@torch.no_grad()
def detect_regions(model: nn.Module, images: list[torch.Tensor], cfg: DetectorConfig) -> list[Regions]:
    """Regions of each image by the configured backend (``images``: (3, H, W) RGB in [0, 1])."""
    return backend(cfg.backend).detect(model, images, cfg)


def region_dim(model: nn.Module, cfg: DetectorConfig) -> int:
    """Width D of the region features this detector and setting produce (one blank image)."""
    device = next(model.parameters()).device
    return detect_regions(model, [torch.zeros(3, 64, 64, device=device)], cfg)[0].features.shape[1]


def pad_regions(regions: list[Regions | None], n_max: int, dim: int) -> dict[str, np.ndarray]:
    """Stack detections into the store's padded arrays. Rows past ``counts`` are zeros (padding);
    a rejected image (None) has count 0 and NaN features, never a made-up feature."""
    n = len(regions)
    arrays = {
        "features": np.zeros((n, n_max, dim), np.float16), "boxes": np.zeros((n, n_max, 4), np.float32),
        "scores": np.zeros((n, n_max), np.float16), "labels": np.zeros((n, n_max), np.int32),
        "counts": np.zeros(n, np.int32),
    }
    for i, r in enumerate(regions):
        if r is None:
            arrays["features"][i] = np.nan
            continue
        k = min(len(r.features), n_max)
        arrays["features"][i, :k] = r.features[:k]
        arrays["boxes"][i, :k] = r.boxes[:k]
        arrays["scores"][i, :k] = r.scores[:k]
        arrays["labels"][i, :k] = r.labels[:k]
        arrays["counts"][i] = k
    return arrays
