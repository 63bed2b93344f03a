"""Region features from a torchvision Faster R-CNN.

Architectures are registered by name in :data:`ARCHITECTURES`; a builder takes a
:class:`DetectorConfig` and returns an untrained ``FasterRCNN`` whose weights are then loaded from
a local state_dict file (no hub download: real COCO weights are saved once with torchvision on a
connected machine, then given as a file). Contract of a builder: it must return a
``torchvision.models.detection.FasterRCNN`` whose ``roi_heads.box_head`` yields the region
feature vector, and honour the config's anchors, RoI size, RPN top-N and score threshold.

Region features are taken for the *final* boxes (after class-specific regression and NMS): the
RoI pooler and box head run once more on those boxes, so feature ``i`` describes box ``i``.
"""
from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, fasterrcnn_mobilenet_v3_large_fpn, fasterrcnn_resnet50_fpn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign, nms, roi_align

from features.weights import load_state_dict, weights_identity

log = logging.getLogger(__name__)

# Bump when a change to this module changes the features it produces: stored shards record it,
# and a resumed stage recomputes shards made by another version.
VERSION = 1


@dataclass(frozen=True)
class DetectorConfig:
    """Every key is documented in params.yaml (section ``regions``)."""

    backend: str = "torchvision"  # torchvision | detectron2 (installed from source)
    arch: str = "fasterrcnn_resnet50_fpn"  # torchvision: a name in ARCHITECTURES
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
    feature: str = "box_head"  # box_head (1024-d for R50-FPN) | backbone_pool (RoIAlign on C5: 2048-d)
    batch_size: int = 4

    def identity(self) -> dict:
        """What the stored regions depend on (provenance): weights hash and every setting that
        shapes the output (not the batch size)."""
        settings = {k: v for k, v in asdict(self).items() if k not in ("weights", "batch_size")}
        return {"regions.weights": weights_identity(self.weights), "regions.settings": settings,
                "regions.code_version": VERSION}


def _anchors(cfg: DetectorConfig) -> AnchorGenerator:
    sizes = tuple(tuple(level) for level in cfg.anchor_sizes)
    return AnchorGenerator(sizes, (tuple(cfg.aspect_ratios),) * len(sizes))


def _common_kwargs(cfg: DetectorConfig) -> dict:
    return dict(
        min_size=cfg.min_size, max_size=cfg.max_size, rpn_anchor_generator=_anchors(cfg),
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        # post-processing keeps candidates down to the top-up floor; _select applies the thresholds
        box_score_thresh=min(cfg.box_score_thresh, cfg.min_regions_score if cfg.min_regions else cfg.box_score_thresh),
        box_nms_thresh=cfg.box_nms_thresh, box_detections_per_img=max(cfg.max_regions, cfg.min_regions),
    )


def _roi_pool(cfg: DetectorConfig, names: list[str]) -> MultiScaleRoIAlign:
    return MultiScaleRoIAlign(featmap_names=names, output_size=cfg.roi_output_size, sampling_ratio=2)


def build_resnet50_fpn(cfg: DetectorConfig, num_classes: int) -> FasterRCNN:
    """torchvision's R50-FPN (box head: 1024-d features)."""
    return fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes,
                                   box_roi_pool=_roi_pool(cfg, ["0", "1", "2", "3"]), **_common_kwargs(cfg))


def build_mobilenet_v3_fpn(cfg: DetectorConfig, num_classes: int) -> FasterRCNN:
    return fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=num_classes,
                                             box_roi_pool=_roi_pool(cfg, ["0", "1"]), **_common_kwargs(cfg))


class TinyBackbone(nn.Sequential):
    """Five 3x3 convs, stride 8, 96 channels: enough for the demo world at 128 px, fast on CPU."""

    out_channels = 96

    def __init__(self) -> None:
        widths = [3, 32, 64, 96, 96, 96]
        strides = [2, 2, 2, 1, 1]
        layers: list[nn.Module] = []
        for c_in, c_out, s in zip(widths[:-1], widths[1:], strides):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=s, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        super().__init__(*layers)


def build_demo_tiny(cfg: DetectorConfig, num_classes: int) -> FasterRCNN:
    """The demo world's detector: single feature map, 256-d box head."""
    backbone = TinyBackbone()
    head_width = 256
    return FasterRCNN(
        backbone, num_classes=None, box_roi_pool=_roi_pool(cfg, ["0"]),
        box_head=TwoMLPHead(backbone.out_channels * cfg.roi_output_size**2, head_width),
        box_predictor=FastRCNNPredictor(head_width, num_classes),
        image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25], **_common_kwargs(cfg),
    )


ARCHITECTURES: dict[str, Callable[[DetectorConfig, int], FasterRCNN]] = {
    "fasterrcnn_resnet50_fpn": build_resnet50_fpn,
    "fasterrcnn_mobilenet_v3_large_fpn": build_mobilenet_v3_fpn,
    "demo_tiny": build_demo_tiny,
}


def load_class_names(path: str) -> list[str]:
    names = json.loads(Path(path).read_text())
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(names) < 2:
        raise ValueError(f"{path}: expected a JSON list of class names (index 0 = background)")
    return names


def build_detector(cfg: DetectorConfig, num_classes: int) -> FasterRCNN:
    if cfg.arch not in ARCHITECTURES:
        raise KeyError(f"regions.arch: unknown architecture {cfg.arch!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[cfg.arch](cfg, num_classes)


def load_detector(cfg: DetectorConfig, device: torch.device) -> tuple[nn.Module, list[str]]:
    """Build the configured architecture and load its weights from the local file."""
    if not cfg.weights:
        raise ValueError("regions.weights: a local detector state_dict file is required")
    if cfg.backend == "detectron2":
        from features.regions_detectron2 import load_detectron2

        return load_detectron2(cfg, device)
    if cfg.backend != "torchvision":
        raise ValueError(f"regions.backend: unknown {cfg.backend!r} (torchvision | detectron2)")
    names = load_class_names(cfg.classes)
    model = build_detector(cfg, len(names))
    model.load_state_dict(load_state_dict(Path(cfg.weights)))
    return model.eval().to(device), names


@dataclass
class Regions:
    """Detections of one image, in original pixel coordinates. ``features``: (R, D)."""

    features: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def _detections(model: FasterRCNN, images: list[torch.Tensor]):
    """Transform, backbone, RPN and RoI heads by hand; returns what feature pooling needs."""
    image_list, _ = model.transform(images)
    backbone = model.backbone
    if hasattr(backbone, "body") and hasattr(backbone, "fpn"):  # keep the last backbone stage (C5)
        stages = backbone.body(image_list.tensors)
        features, last_stage = backbone.fpn(stages), list(stages.values())[-1]
    else:
        features = backbone(image_list.tensors)
        last_stage = features if isinstance(features, torch.Tensor) else list(features.values())[-1]
    if isinstance(features, torch.Tensor):
        features = OrderedDict([("0", features)])
    proposals, _ = model.rpn(image_list, features)
    detections, _ = model.roi_heads(features, proposals, image_list.image_sizes)
    return image_list, features, last_stage, detections


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


def _region_features(model: FasterRCNN, cfg: DetectorConfig, features, last_stage: torch.Tensor,
                     boxes: list[torch.Tensor], image_list) -> list[torch.Tensor]:
    if cfg.feature == "box_head":
        pooled = model.roi_heads.box_roi_pool(features, boxes, image_list.image_sizes)
        flat = model.roi_heads.box_head(pooled)  # (R, representation size): 1024-d for R50-FPN
    elif cfg.feature == "backbone_pool":
        scale = last_stage.shape[-1] / image_list.tensors.shape[-1]
        pooled = roi_align(last_stage, boxes, cfg.roi_output_size, spatial_scale=scale, sampling_ratio=2)
        flat = pooled.mean(dim=(2, 3))  # (R, C): 2048-d C5 for ResNet-50
    else:
        raise ValueError(f"regions.feature: unknown {cfg.feature!r} (box_head | backbone_pool)")
    return list(flat.split([len(b) for b in boxes]))


@torch.no_grad()
def detect_regions(model: nn.Module, images: list[torch.Tensor], cfg: DetectorConfig) -> list[Regions]:
    """Run the detector so that RoI features belong to the final boxes. ``images`` are (3, H, W)
    RGB floats in [0, 1]; boxes come back in their pixel coordinates. An image with no detection
    gets one whole-image box with score 0 and label 0 (background): every image has a node."""
    if cfg.backend == "detectron2":
        from features.regions_detectron2 import detect_regions_detectron2

        return detect_regions_detectron2(model, images, cfg)
    image_list, features, last_stage, detections = _detections(model, images)
    kept = [{k: v[select_regions(d["scores"], d["boxes"], cfg)] for k, v in d.items()} for d in detections]
    boxes = [_with_fallback(d["boxes"], size) for d, size in zip(kept, image_list.image_sizes)]
    region_features = _region_features(model, cfg, features, last_stage, boxes, image_list)
    out = []
    for det, b, feats, size, image in zip(kept, boxes, region_features, image_list.image_sizes, images):
        h, w = image.shape[-2:]
        scale = torch.tensor([w / size[1], h / size[0]] * 2, device=b.device)
        empty = len(det["boxes"]) == 0
        out.append(Regions(
            features=feats.float().cpu().numpy(),
            boxes=(b * scale).float().cpu().numpy(),
            scores=np.zeros(1, np.float32) if empty else det["scores"].float().cpu().numpy(),
            labels=np.zeros(1, np.int64) if empty else det["labels"].cpu().numpy(),
        ))
    return out


def region_dim(model: FasterRCNN, cfg: DetectorConfig) -> int:
    """Width D of the region features this detector and setting produce (one blank image)."""
    device = next(model.parameters()).device
    return detect_regions(model, [torch.zeros(3, 64, 64, device=device)], cfg)[0].features.shape[1]


def _with_fallback(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if len(boxes):
        return boxes
    h, w = size
    return torch.tensor([[0.0, 0.0, float(w), float(h)]], device=boxes.device)


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
