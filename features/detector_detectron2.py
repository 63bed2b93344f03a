"""The detectron2 region backend (``regions.backend: detectron2``): the contract of
:mod:`features.detection`, the same stored schema as the torchvision backend.

detectron2 has no PyPI wheel; install it from its source to use this backend
(``regions.backend: detectron2``). ``regions.d2_config`` is a detectron2 config file (its
model-zoo files, e.g. ``COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml``, are accepted by name);
the detector settings of params.yaml (anchors, RoI size, RPN top-N, thresholds, resize) override
it. Weights are read as a plain state_dict (``.safetensors`` or a torch file, never unpickled
code): convert a model-zoo ``.pkl`` once, on a trusted machine, with detectron2's
``DetectionCheckpointer`` and ``torch.save(model.state_dict())``. Labels are stored as
detectron2's class index + 1, so that id 0 stays the background of ``regions.classes``.
Feature: the box head's output for the final boxes (FPN heads: 1024-d), or for C4 models the
res5 output mean-pooled (2048-d).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from features.config import DetectorConfig
from features.detection import Regions, detect_by_shape, load_class_names, select_regions
from features.precision import run_parts_at
from features.weights import load_state_dict


def build_config(cfg: DetectorConfig, num_classes: int, device: torch.device):
    import detectron2
    from detectron2.config import get_cfg

    d2 = get_cfg()
    path = Path(cfg.d2_config)
    if not path.is_file():  # a model-zoo name: the configs ship inside the package
        path = Path(detectron2.__file__).parent / "model_zoo" / "configs" / cfg.d2_config
    if not path.is_file():
        raise FileNotFoundError(f"regions.d2_config: {cfg.d2_config} is neither a file nor a model-zoo config")
    d2.merge_from_file(str(path))
    d2.MODEL.DEVICE = str(device)
    d2.MODEL.WEIGHTS = ""
    d2.MODEL.ROI_HEADS.NUM_CLASSES = num_classes - 1  # detectron2 counts no background class
    d2.MODEL.ROI_HEADS.SCORE_THRESH_TEST = cfg.candidate_score_thresh
    d2.MODEL.ROI_HEADS.NMS_THRESH_TEST = cfg.box_nms_thresh
    d2.TEST.DETECTIONS_PER_IMAGE = cfg.candidates_per_image
    d2.MODEL.RPN.PRE_NMS_TOPK_TEST = cfg.rpn_pre_nms_top_n_test
    d2.MODEL.RPN.POST_NMS_TOPK_TEST = cfg.rpn_post_nms_top_n_test
    d2.MODEL.ANCHOR_GENERATOR.SIZES = [list(level) for level in cfg.anchor_sizes]
    d2.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [list(cfg.aspect_ratios)]
    d2.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = cfg.roi_output_size
    d2.INPUT.MIN_SIZE_TEST, d2.INPUT.MAX_SIZE_TEST = cfg.min_size, cfg.max_size
    return d2


def build_detectron2(cfg: DetectorConfig, num_classes: int, device: torch.device = torch.device("cpu")) -> nn.Module:
    from detectron2.modeling import build_model

    return build_model(build_config(cfg, num_classes, device))


def load(cfg: DetectorConfig, device: torch.device, precision: str = "fp32") -> tuple[nn.Module, list[str]]:
    """The backend contract's ``load``: the backbone, RPN head and box head (or C4's res5) at
    ``precision``; the box predictor stays float32."""
    if cfg.feature != "box_head":
        raise ValueError("regions.feature: the detectron2 backend provides box_head features only")
    names = load_class_names(cfg.classes)
    model = build_detectron2(cfg, len(names), device)
    path = Path(cfg.weights)
    if path.suffix == ".pkl":
        raise ValueError(f"{path}: pickled detectron2 checkpoints are not loaded (they can run code); "
                         "convert it once to a state_dict (.pth or .safetensors)")
    model.load_state_dict(load_state_dict(path))
    heads = ["roi_heads.box_head"] if hasattr(model.roi_heads, "box_head") else ["roi_heads.res5"]
    return run_parts_at(model.eval(), ["backbone", "proposal_generator.rpn_head", *heads], precision, device), names


def detect(model: nn.Module, images: list[torch.Tensor], cfg: DetectorConfig) -> list[Regions]:
    """The backend contract's ``detect``: the box head on the final boxes. Each image is padded on
    its own; only images padded to the same shape run as one batch
    (:func:`features.detection.detect_by_shape`)."""
    from detectron2.structures import ImageList

    singles = []
    for image in images:
        pixels = image * 255
        if model.input_format == "BGR":
            pixels = pixels.flip(0)
        singles.append(model.preprocess_image([{"image": pixels, "height": image.shape[-2], "width": image.shape[-1]}]))

    def detect_batch(group: list[int]) -> list[Regions]:
        batch = ImageList(torch.cat([singles[i].tensor for i in group]), [singles[i].image_sizes[0] for i in group])
        return _detect_batch(model, batch, [images[i] for i in group], cfg)

    return detect_by_shape([s.tensor.shape for s in singles], detect_batch)


def _detect_batch(model: nn.Module, batch, images: list[torch.Tensor], cfg: DetectorConfig) -> list[Regions]:
    from detectron2.modeling.postprocessing import detector_postprocess
    from detectron2.structures import Boxes, Instances

    features = model.backbone(batch.tensor)
    proposals, _ = model.proposal_generator(batch, features, None)
    instances, _ = model.roi_heads(batch, features, proposals, None)
    kept = []
    for inst, size in zip(instances, batch.image_sizes):
        order = select_regions(inst.scores, inst.pred_boxes.tensor, cfg)
        inst = inst[order]
        if len(inst) == 0:  # no detection: one whole-image box, score 0, background label
            h, w = size
            device = batch.tensor.device
            inst = Instances(size, pred_boxes=Boxes(torch.tensor([[0.0, 0.0, float(w), float(h)]], device=device)),
                             scores=torch.zeros(1, device=device),
                             pred_classes=torch.full((1,), -1, dtype=torch.long, device=device))
        kept.append(inst)
    region_features = _box_features(model, features, [inst.pred_boxes for inst in kept])
    out = []
    for inst, feats, image in zip(kept, region_features, images):
        original = detector_postprocess(inst, image.shape[-2], image.shape[-1])  # boxes to input pixels
        out.append(Regions(features=feats.float().cpu().numpy(),
                           boxes=original.pred_boxes.tensor.float().cpu().numpy(),
                           scores=original.scores.float().cpu().numpy(),
                           labels=(original.pred_classes + 1).cpu().numpy().astype(np.int64)))
    return out


def _box_features(model: nn.Module, features: dict[str, torch.Tensor], boxes: list) -> list[torch.Tensor]:
    heads = model.roi_heads
    maps = [features[f] for f in heads.in_features]
    if hasattr(heads, "box_head"):  # StandardROIHeads (FPN)
        flat = heads.box_head(heads.box_pooler(maps, boxes))
    else:  # Res5ROIHeads (C4): res5 on the pooled boxes, then mean
        flat = heads._shared_roi_transform(maps, boxes).mean(dim=(2, 3))
    return list(flat.split([len(b) for b in boxes]))
