"""The captioner's, trainer's and decoder's configurations, as data (no torch): the parameter
parser and every stage import them cheaply. Every key is documented at its default in
params.yaml, under the section named in each class."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class LossConfig:
    """Every key is documented in params.yaml (section ``train.loss``)."""

    alpha_align: float = 0.7  # α1
    alpha_gate: float = 0.3  # α2
    gate_lambda: float = 1.0  # λ inside L_gate = λ‖·‖₁
    align: Literal["cosine", "infonce"] = "cosine"  # cosine | infonce
    infonce_temperature: float = 0.07
    gate_on: Literal["activations", "weights"] = "activations"  # activations | weights (of W_g)
    grounding_weight: float = 0.0  # weight of the grounding loss (0 = off; needs region tokens and phrase groundings)
    grounding_heads: int = 1  # heads of GPT-2's last layer whose attention the grounding loss supervises


@dataclass(frozen=True)
class DecodeConfig:
    """Every key is documented in params.yaml (section ``evaluate``)."""

    method: Literal["greedy", "beam", "hybrid", "sample"] = "hybrid"  # greedy | beam | hybrid | sample (top-p)
    beam_size: int = 5
    greedy_tokens: int = 3  # hybrid: tokens chosen greedily before the beam takes over
    max_tokens: int = 30
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0  # no n-gram of this size twice in a caption (0 = off), as transformers' generate
    top_p: float = 0.8  # sample: nucleus sampling keeps the most probable tokens up to this mass (ClipCap's 0.8)
    temperature: float = 1.0  # sample: logits divided by it before top_p
    rerank: Literal["none", "clip", "coverage"] = "none"  # none | clip | coverage: how the final beam is chosen (see :func:`decode`)
    coverage_weight: float = 1.0  # rerank coverage: β of the coverage penalty
    coverage_heads: int = 2  # rerank coverage: heads of GPT-2's last layer that read it (train.loss.grounding_heads)


@dataclass(frozen=True)
class ModelConfig:
    """Every key is documented in params.yaml (section ``model``)."""

    gpt2: str = "gpt2"
    condition: Literal["image", "keywords"] = "image"  # image | keywords (GPT-2 sees only the top-k keywords by image-text similarity)
    keyword_top_k: int = 5  # condition keywords: keywords per image, in order of similarity
    regions: bool = True  # False: no region branch at all — ClipCap's CLIP-prefix captioner (f_fused = CLIP)
    normalize_clip: bool = False  # unit-normalise the CLIP embedding (text-only training needs it)
    gat: bool = True
    gat_hidden: int = 128
    gat_heads: int = 4
    gat_layers: int = 2
    gat_dropout: float = 0.1
    gat_edge_weights: bool = True
    global_guidance: bool = True
    local_guidance: bool = True
    local_pooling: Literal["score", "uniform"] = "score"  # score | uniform: how region keywords are weighted into f_local_text
    local_text: Literal["keywords", "graph"] = "keywords"  # keywords (the store's region keywords) | graph (the
    #                                    object-bank keywords nearest the GAT's nodes, projected into CLIP's space)
    region_adapter: bool = False  # project each region feature D → d (CLIP's width) before the GAT: the paper's
    #                                    CrossModal_Adapter (2048 → 512 over backbone_pool features)
    region_features: Literal["detector", "clip", "both"] = "detector"  # detector (the paper) | clip (each crop's CLIP embedding) | both (side by side)
    prefix_regions: Literal["mean", "tokens"] = "mean"  # mean (the paper: pooled into f_fused only) | tokens (+ one prefix token per region)
    region_tokens: int = 10  # tokens: regions given their own token (the rest are left out)
    region_order: Literal["score", "position", "top_down"] = "score"  # tokens: score (the detector's order) | position
    #                                    (left to right, then top down) | top_down
    region_token_skip: bool = False  # tokens: each token also reads its region's own feature beside the GAT's output
    spatial_directions: int = 0  # tokens: each token adds the image's other region tokens, summed per direction (N)
    spatial_context: Literal["gates", "bins"] = "gates"  # gates (N learned gates of the relative box) | bins (N fixed angle sectors)
    spatial_tokens: bool = False  # the spatial context gets a second token per region instead of joining its own
    spatial_token_order: Literal["same", "top_down"] = "same"  # spatial_tokens: same (as region_order) | top_down (context tokens top to
    #                                    bottom, each with its region's own token added)
    box_embedding: bool = False  # add an embedding of each region's normalised box to its feature
    edge_geometry: bool = False  # relative box geometry as GAT edge attributes (beside the edge weight)
    prefix_length: int = 10
    mapping: Literal["mlp", "transformer"] = "mlp"  # mlp | transformer (ClipCap's two mappers)
    mapping_hidden: int = 0  # mlp: hidden width, 0 = ClipCap's (prefix_length * h) // 2
    mapping_layers: int = 8  # transformer: encoder layers
    mapping_clip_length: int = 10  # transformer: tokens the input is projected to
    finetune_clip: bool = False  # phase 2 also trains CLIP's last two vision blocks, from cached tokens

    @property
    def reads_region_clip(self) -> bool:
        """Whether the model needs the store's region_clip kind."""
        return self.regions and self.region_features != "detector"


@dataclass(frozen=True)
class TrainConfig:
    """Every key is documented in params.yaml (section ``train.loss``)."""

    phase1_epochs: int = 5  # GPT-2 frozen: GAT, gating, fusion and mapping train
    phase2_epochs: int = 25  # everything trains jointly
    lr: float = 1e-4
    lr_decay: float = 0.9  # lr × lr_decay after every epoch
    weight_decay: float = 0.01
    batch_size: int = field(default=64, metadata={"min": 1})
    grad_clip: float = 1.0
    max_tokens: int = 40
    num_workers: int = 0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 with loss scaling, CUDA only)
    compile: bool = False  # torch.compile GPT-2 (the bulk of a step)
    seed: int = 0
    mode: Literal["supervised", "text_only"] = "supervised"  # supervised | text_only (CapDec: caption text embeddings + noise stand in for images)
    text_noise: float = 0.016  # text_only: variance of the Gaussian noise added to the normalised text embedding
    labelled_fraction: float = 1.0  # share of the training images whose captions are used (semi-supervised: e.g. 0.02)
    scst_epochs: int = 0  # SCST epochs after phases 1-2 (self-critical training, reward train.scst_reward)
    scst_lr: float = 1e-5  # learning rate at the start of the SCST epochs (× lr_decay per epoch as before)
    scst_reward: Literal["cider", "clip"] = "cider"  # cider (CIDEr-D against the training references) | clip
    #                                    (CLIP image-text cosine, on the images left unlabelled: semi-supervised)
    scst_baseline: Literal["greedy", "mean"] = "greedy"  # greedy (the greedy caption's reward) | mean (of the
    #                                    image's other samples, ruotianluo's "new SCST"; needs scst_samples >= 2)
    scst_samples: int = 1  # captions sampled per image per step
    val_images: int = 200  # validation images decoded (greedy) after each epoch; 0 = all
    loss: LossConfig = field(default_factory=LossConfig)
