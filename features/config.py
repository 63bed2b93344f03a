"""The feature extractors' configurations, as data: the parameter parser and every stage import
them without the extractors' code. Each field is its key's one place: default, type, allowed
values and, in its comment, meaning (params.yaml is rendered from them: tools/presets.py).
``identity()`` is what a produced feature depends on (its provenance, completed with the
producing code's version in :mod:`pipeline.provenance`)."""
from __future__ import annotations

import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from features.precision import Precision
from features.weights import weights_identity


def choices(cls: type, name: str) -> tuple:
    """The values a config field's ``Literal`` type allows: the one list, spelled in the class."""
    return typing.get_args(typing.get_type_hints(cls)[name])


@dataclass(frozen=True)
class ClipConfig:
    """Section ``clip`` of the parameters; each field's comment documents its key."""

    model: str = "ViT-B-32"  # open_clip config name (ViT-B-32 for the paper)
    pretrained: str = "openai"  # open_clip tag (openai) or a local weights file
    config_file: str = ""  # custom config to register ('' for built-ins)
    tokenizer: str = ""  # local HF tokenizer folder ('' = CLIP's BPE)
    cache_tokens: bool = False  # also store the ViT tokens entering the last two blocks (for fine-tuning them)
    batch_size: int = field(default=64, metadata={"min": 1})  # images through CLIP at once
    activation: Literal["auto", "quick_gelu", "gelu"] = "auto"  # the MLP activation the weights were trained with:
    #   auto (a pretrained tag's: QuickGELU for OpenAI's; else the model config's) | quick_gelu | gelu (set it for a
    #   local copy of tagged weights)

    def identity(self) -> dict:
        """What the produced embeddings depend on (stored as provenance, checked by readers)."""
        config = Path(self.config_file).read_text() if self.config_file else ""
        return {"clip.model": self.model, "clip.weights": weights_identity(self.pretrained),
                "clip.config": config, "clip.tokenizer": weights_identity(self.tokenizer) if self.tokenizer else ""}


@dataclass(frozen=True)
class KeywordConfig:
    """Section ``keywords`` of the parameters; each field's comment documents its key."""

    scene_bank: str = "mined"  # "mined" from training captions, or a text file with one keyword per line
    scene_bank_size: int = 64  # scene keywords mined (the most frequent)
    min_count: int = 5  # a mined keyword appears at least this often
    prompt: str = "{}"  # how a keyword is phrased for CLIP's text encoder
    object_bank: str = "classes"  # "classes" (the detector's class names) or a text file of object/attribute keywords
    local_source: Literal["labels", "retrieval"] = "labels"  # labels (each region's class) | retrieval (FAISS: bank
    #   entries nearest the region crop's CLIP embedding)
    retrieval_k: int = 1  # keywords retrieved per region


@dataclass(frozen=True)
class KnnConfig:
    """Section ``knn`` of the parameters; each field's comment documents its key."""

    k: int = 5  # neighbours per region (fewer in an image with fewer regions)
    metric: Literal["cosine", "center", "both"] = "cosine"  # cosine (features, the paper's eqs.) | center (box centres)
    #   | both (K of each)
    sigma: float = 1.0  # Gaussian kernel width of the edge weights
    backend: Literal["torch", "faiss"] = "torch"  # torch (batched, fastest on CPU) | faiss
    batch_images: int = 4096  # images per batched torch search

    def identity(self) -> dict:
        """What the graphs depend on; the backend is left out: both give the same neighbours."""
        return {"knn": {"k": self.k, "metric": self.metric, "sigma": self.sigma}}


@dataclass(frozen=True)
class DetectorConfig:
    """Section ``regions`` of the parameters; each field's comment documents its key."""

    backend: Literal["torchvision", "detectron2"] = "torchvision"  # torchvision | detectron2 (installed from its
    #   source)
    arch: str = "fasterrcnn_resnet50_fpn"  # torchvision: demo_tiny | fasterrcnn_resnet50_fpn |
    #   fasterrcnn_mobilenet_v3_large_fpn
    d2_config: str = ""  # detectron2: config file or model-zoo name (COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml)
    weights: str = ""  # local state_dict (.safetensors/.pt/.pth)
    classes: str = ""  # JSON list of class names, index = label id
    min_size: int = 800  # the detector's resize (shorter side / longer-side cap)
    max_size: int = 1333  # the longer side's cap of that resize
    anchor_sizes: list[list[int]] = field(default_factory=lambda: [[32], [64], [128], [256], [512]])
    #   per feature level; the demo backbone has one level
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])  # anchor aspect ratios (height / width)
    roi_output_size: int = 7  # RoIAlign output (7x7)
    rpn_pre_nms_top_n_test: int = 1000  # proposals per level kept before the RPN's NMS
    rpn_post_nms_top_n_test: int = 100  # proposals kept after it
    box_score_thresh: float = 0.05  # detections below this score are dropped
    box_nms_thresh: float = 0.5  # IoU of the per-class NMS over the final boxes
    class_agnostic_nms: float = 1.0  # IoU over which a box gives way to a better one of any class (1.0 = off: per-class
    #   NMS only)
    min_regions: int = 0  # top up to this many regions with lower-scoring boxes...
    min_regions_score: float = 0.01  # ...but none scoring below this
    max_regions: int = 36  # N_max: regions kept per image (top by score)
    feature: Literal["box_head", "backbone_pool"] = "box_head"  # box_head (R50-FPN: 1024-d) | backbone_pool (RoIAlign
    #   on C5: 2048-d)
    batch_size: int = field(default=4, metadata={"min": 1})  # images through the detector at once

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


@dataclass(frozen=True)
class StoreConfig:
    """Section ``store`` of the parameters; each field's comment documents its key."""

    dir: str = "data/features"  # the store's folder: one subfolder of shards per kind
    shard_size: int = field(default=1000, metadata={"min": 1})  # images per shard (a fixed slice of the manifest)
    num_workers: int = field(default=2, metadata={"min": 0})  # DataLoader workers decoding images
    device: str = "auto"  # auto | cpu | cuda | cuda:N (auto: the GPU of LOCAL_RANK)
    precision: Precision = "fp32"  # fp32 | bf16 (CPU, CUDA) | fp16 (CUDA): the extractors' networks under autocast;
    #   boxes, NMS and scores stay fp32; recorded in provenance (docs/features.md#precision)
    on_bad_image: Literal["skip", "fail"] = "skip"  # skip (listed in <kind>/rejects.json, left out) | fail
    max_open_shards: int = field(default=16, metadata={"min": 1})  # shards a reader keeps open per kind and process
    #   (least recently used closed first)
    optional_kinds: list[Literal["region_clip"]] = field(default_factory=list)  # kinds extracted only when listed:
    #   region_clip (each region crop's CLIP embedding, up to 36 CLIP forwards per image) is read only by
    #   model.region_features clip | both
