"""Detection, backend-independent: what a detector returns for one image, which detections
become regions, and the padded arrays the store keeps. The backends and their registry:
:mod:`features.detectors`."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torchvision.ops import nms

from features.config import DetectorConfig

# Bump when a change to detection (this module or a backend) changes the features it produces:
# stored shards record it, and a resumed stage recomputes shards made by another version.
VERSION = 2  # 2: each image padded only to its own size (batch-independent features)


@dataclass
class Regions:
    """Detections of one image, in original pixel coordinates. ``features``: (R, D)."""

    features: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def same_shape_groups(shapes: list[tuple[int, ...]]) -> list[list[int]]:
    """Indices grouped by equal shape, in first-seen order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, shape in enumerate(shapes):
        groups.setdefault(tuple(shape), []).append(i)
    return list(groups.values())


def detect_by_shape(shapes: list[tuple[int, ...]], detect_batch: Callable[[list[int]], list[Regions]]) -> list[Regions]:
    """Regions of each image, ``detect_batch`` run once per group of images whose padded input
    (of the given ``shapes``) is the same. So no image is padded to a neighbour's size: padding
    reaches the backbone's features, the RPN's anchors and so the boxes, and an image's regions
    would depend on which images share its batch (measured: boxes moved by up to 452 px)."""
    out: list[Regions] = [None] * len(shapes)  # type: ignore[list-item]
    for group in same_shape_groups(shapes):
        for i, regions in zip(group, detect_batch(group)):
            out[i] = regions
    return out


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
