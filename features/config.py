"""The feature extractors' configurations, as data: the parameter parser and every stage import
them without the extractors' code. Every key is documented at its default in params.yaml,
under the section named in each class. ``identity()`` is what a produced feature depends on (its
provenance, completed with the producing code's version in :mod:`pipeline.provenance`)."""
from __future__ import annotations

import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from features.weights import weights_identity


def choices(cls: type, name: str) -> tuple:
    """The values a config field's ``Literal`` type allows: the one list, spelled in the class."""
    return typing.get_args(typing.get_type_hints(cls)[name])


@dataclass(frozen=True)
class ClipConfig:
    """Every key is documented in params.yaml (section ``clip``)."""

    model: str = "ViT-B-32"
    pretrained: str = "openai"
    config_file: str = ""
    tokenizer: str = ""
    cache_tokens: bool = False  # also store the ViT tokens entering the last two blocks (to fine-tune them)
    batch_size: int = field(default=64, metadata={"min": 1})
    # the MLP activation the weights were trained with: auto = the pretrained tag's (OpenAI's tags:
    # quick_gelu), or for a local file the model config's; set it for a local copy of tagged weights
    activation: Literal["auto", "quick_gelu", "gelu"] = "auto"

    def identity(self) -> dict:
        """What the produced embeddings depend on (stored as provenance, checked by readers)."""
        config = Path(self.config_file).read_text() if self.config_file else ""
        return {"clip.model": self.model, "clip.weights": weights_identity(self.pretrained),
                "clip.config": config, "clip.tokenizer": weights_identity(self.tokenizer) if self.tokenizer else ""}


@dataclass(frozen=True)
class KeywordConfig:
    """Every key is documented in params.yaml (section ``keywords``)."""

    scene_bank: str = "mined"  # "mined", or a text file with one keyword per line
    scene_bank_size: int = 64
    min_count: int = 5
    prompt: str = "{}"  # how a keyword is phrased for CLIP's text encoder, e.g. "a photo of {}"
    object_bank: str = "classes"  # "classes" (the detector's), or a text file with one keyword per line
    local_source: Literal["labels", "retrieval"] = "labels"  # labels | retrieval (FAISS over the object bank by region-crop CLIP embedding)
    retrieval_k: int = 1  # keywords retrieved per region


@dataclass(frozen=True)
class KnnConfig:
    """Every key is documented in params.yaml (section ``knn``)."""

    k: int = 5
    metric: Literal["cosine", "center", "both"] = "cosine"  # cosine | center | both
    sigma: float = 1.0
    backend: Literal["torch", "faiss"] = "torch"  # torch | faiss
    batch_images: int = 4096

    def identity(self) -> dict:
        """What the graphs depend on; the backend is left out: both give the same neighbours."""
        return {"knn": {"k": self.k, "metric": self.metric, "sigma": self.sigma}}


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
    batch_size: int = field(default=4, metadata={"min": 1})

    def identity(self) -> dict:
        """What the stored regions depend on (provenance): weights hash and every setting that
        shapes the output (not the batch size)."""
        settings = {k: v for k, v in asdict(self).items() if k not in ("weights", "batch_size")}
        return {"regions.weights": weights_identity(self.weights), "regions.settings": settings}

    @property
    def candidate_score_thresh(self) -> float:
        """The score down to which a backend keeps candidates: the top-up floor when
        ``min_regions`` asks for one; :func:`select_regions` then applies the thresholds."""
        return min(self.box_score_thresh, self.min_regions_score) if self.min_regions else self.box_score_thresh

    @property
    def candidates_per_image(self) -> int:
        return max(self.max_regions, self.min_regions)
