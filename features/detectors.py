"""The detector backends, by name (``regions.backend``), and running the configured one.

:data:`BACKENDS` maps a name to the module implementing it, imported when first used (so an
uninstalled detectron2 costs nothing). Contract of a backend module:

- ``load(cfg, device, precision) -> (model, class names)``: the detector built as ``cfg`` says,
  with the weights of the local file ``cfg.weights``, in eval mode on ``device``, its networks
  (backbone, RPN head, box head) run at ``precision`` (:mod:`features.precision`) and everything
  that decides boxes and scores (box predictor, decoding, NMS) in float32;
- ``detect(model, images, cfg) -> list[Regions]``: for each image ((3, H, W) RGB floats in
  [0, 1]) its kept detections (:func:`features.detection.select_regions`), best first, with boxes
  in the image's pixels and, as ``features``, the RoI features of those final boxes; an image
  without any detection gets one whole-image box with score 0 and label 0 (background), so every
  image has a node. Labels index the class-name list, 0 being the background.
"""
from __future__ import annotations

import importlib
from types import ModuleType

import torch
from torch import nn

from features.config import DetectorConfig
from features.detection import Regions
from features.precision import check_precision

BACKENDS = {"torchvision": "features.detector_torchvision", "detectron2": "features.detector_detectron2"}


def backend(name: str) -> ModuleType:
    """The module implementing backend ``name`` (see the contract above)."""
    if name not in BACKENDS:
        raise ValueError(f"regions.backend: unknown {name!r} ({' | '.join(BACKENDS)})")
    return importlib.import_module(BACKENDS[name])


def load_detector(cfg: DetectorConfig, device: torch.device, precision: str = "fp32") -> tuple[nn.Module, list[str]]:
    """The configured backend's detector with its weights loaded from the local file, its
    networks run at ``precision`` (fp32 | bf16 | fp16)."""
    if not cfg.weights:
        raise ValueError("regions.weights: a local detector state_dict file is required")
    check_precision(precision, device)
    return backend(cfg.backend).load(cfg, device, precision)


@torch.no_grad()
def detect_regions(model: nn.Module, images: list[torch.Tensor], cfg: DetectorConfig) -> list[Regions]:
    """Regions of each image by the configured backend (``images``: (3, H, W) RGB in [0, 1])."""
    return backend(cfg.backend).detect(model, images, cfg)


def region_dim(model: nn.Module, cfg: DetectorConfig) -> int:
    """Width D of the region features this detector and setting produce (one blank image)."""
    device = next(model.parameters()).device
    return detect_regions(model, [torch.zeros(3, 64, 64, device=device)], cfg)[0].features.shape[1]
