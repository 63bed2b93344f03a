"""The torchvision region backend (``regions.backend: torchvision``), a Faster R-CNN; the
backend contract is in :mod:`features.detection`.

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

from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, fasterrcnn_mobilenet_v3_large_fpn, fasterrcnn_resnet50_fpn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import MultiScaleRoIAlign, roi_align

from features.config import DetectorConfig
from features.detection import Regions, detect_by_shape, load_class_names, select_regions
from features.precision import run_parts_at
from features.weights import load_state_dict


def _anchors(cfg: DetectorConfig) -> AnchorGenerator:
    sizes = tuple(tuple(level) for level in cfg.anchor_sizes)
    return AnchorGenerator(sizes, (tuple(cfg.aspect_ratios),) * len(sizes))


def _common_kwargs(cfg: DetectorConfig) -> dict:
    return dict(
        min_size=cfg.min_size, max_size=cfg.max_size, rpn_anchor_generator=_anchors(cfg),
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        box_score_thresh=cfg.candidate_score_thresh, box_nms_thresh=cfg.box_nms_thresh,
        box_detections_per_img=cfg.candidates_per_image,
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


def load(cfg: DetectorConfig, device: torch.device, precision: str = "fp32") -> tuple[nn.Module, list[str]]:
    """The backend contract's ``load``: the configured architecture with its weights, the
    networks at ``precision``; the box predictor (class scores and box deltas) stays float32."""
    names = load_class_names(cfg.classes)
    model = build_detector(cfg, len(names))
    model.load_state_dict(load_state_dict(Path(cfg.weights)))
    backbone = ["backbone.body", "backbone.fpn"] if hasattr(model.backbone, "fpn") else ["backbone"]  # body: C5 is read too
    return run_parts_at(model.eval().to(device), [*backbone, "rpn.head", "roi_heads.box_head"], precision, device), names


def build_detector(cfg: DetectorConfig, num_classes: int) -> FasterRCNN:
    if cfg.arch not in ARCHITECTURES:
        raise KeyError(f"regions.arch: unknown architecture {cfg.arch!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[cfg.arch](cfg, num_classes)


def _detections(model: FasterRCNN, image_list: ImageList):
    """Backbone, RPN and RoI heads by hand; returns what feature pooling needs."""
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


def detect(model: FasterRCNN, images: list[torch.Tensor], cfg: DetectorConfig) -> list[Regions]:
    """The backend contract's ``detect``: RoI features of the final boxes (the pooler and box head
    run once more on them). Each image is resized and padded on its own; only images padded to
    the same shape run as one batch (:func:`features.detection.detect_by_shape`)."""
    singles = [model.transform([image])[0] for image in images]  # (1, 3, H', W') each, padded to its own size

    def detect_batch(group: list[int]) -> list[Regions]:
        batch = ImageList(torch.cat([singles[i].tensors for i in group]), [singles[i].image_sizes[0] for i in group])
        return _detect_batch(model, batch, [images[i] for i in group], cfg)

    return detect_by_shape([s.tensors.shape for s in singles], detect_batch)


def _detect_batch(model: FasterRCNN, image_list: ImageList, images: list[torch.Tensor],
                  cfg: DetectorConfig) -> list[Regions]:
    image_list, features, last_stage, detections = _detections(model, image_list)
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


def _with_fallback(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if len(boxes):
        return boxes
    h, w = size
    return torch.tensor([[0.0, 0.0, float(w), float(h)]], device=boxes.device)


