"""The captioner's, trainer's and decoder's configurations, as data (no torch): the parameter
parser and every stage import them cheaply. Each field is its key's one place: default, type,
allowed values and, in its comment, meaning (params.yaml is rendered from them: tools/presets.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class LossConfig:
    """Section ``train.loss`` of the parameters; each field's comment documents its key."""

    alpha_align: float = 0.7  # α1
    alpha_gate: float = 0.3  # α2
    gate_lambda: float = 1.0  # λ in L_gate
    align: Literal["cosine", "infonce"] = "cosine"  # cosine | infonce
    infonce_temperature: float = 0.07  # align infonce: τ of the softmax over the batch
    gate_on: Literal["activations", "weights"] = "activations"  # activations | weights (L1 on W_g)
    grounding_weight: float = 0.0  # grounding loss (beyond the paper; 0 = off): heads of GPT-2's last layer learn to
    #   attend, from each token, to the region tokens of the object last named (needs region tokens and phrase
    #   groundings: the demo world's, from its ground truth)
    grounding_heads: int = 1  # heads of the last layer it supervises


@dataclass(frozen=True)
class DecodeConfig:
    """Section ``evaluate.decode`` of the parameters; each field's comment documents its key."""

    method: Literal["greedy", "beam", "hybrid", "sample"] = "hybrid"  # greedy | beam | hybrid (the paper's: greedy
    #   first tokens, then beam) | sample (nucleus)
    beam_size: int = 5  # beam and hybrid: beams kept
    greedy_tokens: int = 3  # hybrid: tokens chosen greedily before the beam takes over
    max_tokens: int = 30  # tokens decoded at most
    length_penalty: float = 1.0  # beam score = log-probability / length ** length_penalty
    no_repeat_ngram_size: int = 0  # no n-gram of this size twice in a caption (0 = off; transformers' rule)
    top_p: float = 0.8  # sample: nucleus sampling keeps the most probable tokens up to this mass (ClipCap's 0.8)
    temperature: float = 1.0  # sample: logits are divided by it before top_p
    rerank: Literal["none", "clip", "coverage"] = "none"  # none | clip (the final beam whose CLIP text embedding is
    #   closest to the image) | coverage (the best by score + coverage_weight × GNMT's coverage penalty over the
    #   regions: Σ log min(attention the caption gave the region, 1); needs region tokens, ideally the grounding loss)
    coverage_weight: float = 1.0  # rerank coverage: weight of the penalty
    coverage_heads: int = 2  # rerank coverage: heads of GPT-2's last layer read (those train.loss.grounding_heads
    #   taught)


@dataclass(frozen=True)
class ModelConfig:
    """Section ``model`` of the parameters; each field's comment documents its key."""

    gpt2: str = "gpt2"  # local GPT-2 folder (config, weights, tokenizer) or a hub name
    condition: Literal["image", "keywords"] = "image"  # image | keywords: GPT-2 sees only the top-k keywords (scene +
    #   object banks) by CLIP image-text similarity (keyword-only; needs regions, guidance, finetune_clip off)
    keyword_top_k: int = 5  # condition keywords: keywords per image, most similar first
    regions: bool = True  # false: no region branch (ClipCap's CLIP-prefix captioner; needs gat: false)
    normalize_clip: bool = False  # unit-normalise the CLIP embedding (text-only training needs it)
    gat: bool = True  # GAT-LFE on; false = regions mean-pooled without the GAT (ablation)
    gat_hidden: int = 128  # GAT width per head
    gat_heads: int = 4  # GAT attention heads
    gat_layers: int = 2  # GAT layers
    gat_dropout: float = 0.1  # dropout on the GAT's features and attention
    gat_edge_weights: bool = True  # the Gaussian edge weights enter as edge attributes
    global_guidance: bool = True  # eq. 11 (ablation switch)
    local_guidance: bool = True  # eq. 12 (ablation switch)
    local_pooling: Literal["score", "uniform"] = "score"  # score | uniform: weights of region keywords in f_local_text
    local_text: Literal["keywords", "graph"] = "keywords"  # f_local_text from: keywords (each region's keywords from
    #   the store: keywords.local_source) | graph (the object-bank keywords nearest each GAT output projected into
    #   CLIP's space)
    region_adapter: bool = False  # a learned linear map of each region feature to CLIP's width d before the GAT (the
    #   paper's CrossModal_Adapter: 2048 -> 512 with regions.feature backbone_pool)
    region_features: Literal["detector", "clip", "both"] = "detector"  # detector (the paper's Faster R-CNN features) |
    #   clip (each crop's CLIP embedding, the region_clip stage) | both (side by side)
    prefix_regions: Literal["mean", "tokens"] = "mean"  # mean (the paper: regions only pooled into f_fused) | tokens (+
    #   one prefix token per region)
    region_tokens: int = 10  # tokens: regions given their own token, in region_order (the rest are left out)
    region_order: Literal["score", "position", "top_down"] = "score"  # tokens: score (the detector's order) | position
    #                                    (left to right, then top down) | top_down
    region_token_skip: bool = False  # tokens: each token also reads its region's own feature beside the GAT's output
    spatial_directions: int = 0  # tokens: each region token adds the image's other region tokens, summed per direction
    #   of their box seen from its own (a spatial graph, as GCN-LSTM's; 0 = off)
    spatial_context: Literal["gates", "bins"] = "gates"  # bins (N fixed angle sectors from 0°, GCN-LSTM's classes) |
    #   gates (N learned sigmoid gates of the relative box)
    spatial_tokens: bool = False  # tokens: the spatial context gets a second prefix token per region instead of being
    #   added to the region's own (which then says only what the region is)
    spatial_token_order: Literal["same", "top_down"] = "same"  # spatial_tokens: same (the context tokens in
    #   region_order) | top_down (top to bottom, each also holding its region's own token: positions then say which is
    #   higher)
    box_embedding: bool = False  # add an embedding (sinusoids, then linear) of each region's normalised box (cx, cy, w,
    #   h, area) to its feature
    edge_geometry: bool = False  # relative box geometry (dx, dy, log w and h ratios) as GAT edge attributes (needs gat)
    prefix_length: int = 10  # L_p prefix tokens given to GPT-2
    mapping: Literal["mlp", "transformer"] = "mlp"  # mlp | transformer (ClipCap's two mappers)
    mapping_hidden: int = 0  # mlp: hidden width (0 = ClipCap's L_p*h/2)
    mapping_layers: int = 8  # transformer: encoder layers
    mapping_clip_length: int = 10  # transformer: tokens the input is projected to
    finetune_clip: bool = False  # phase 2 also trains CLIP's last two vision blocks from cached tokens (needs
    #   clip.cache_tokens)

    @property
    def reads_region_clip(self) -> bool:
        """Whether the model needs the store's region_clip kind."""
        return self.regions and self.region_features != "detector"


@dataclass(frozen=True)
class TrainConfig:
    """Section ``train`` of the parameters; each field's comment documents its key."""

    phase1_epochs: int = 5  # GPT-2 frozen
    phase2_epochs: int = 25  # everything trains
    lr: float = 1e-4  # AdamW learning rate at the start
    lr_decay: float = 0.9  # lr × lr_decay after every epoch
    weight_decay: float = 0.01  # AdamW weight decay
    batch_size: int = field(default=64, metadata={"min": 1})  # caption pairs per step (over all processes)
    grad_clip: float = 1.0  # gradient norm clipped to this
    max_tokens: int = 40  # caption tokens kept, EOS included (the prefix, up to 2 tokens per region token, and
    #   these must fit GPT-2's positions)
    num_workers: int = 0  # DataLoader workers reading the store
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 needs CUDA)
    compile: bool = False  # torch.compile GPT-2
    seed: int = 0  # initialisation, batch order and dropout
    mode: Literal["supervised", "text_only"] = "supervised"  # supervised | text_only (CapDec: noisy caption embeddings
    #   stand in for images)
    text_noise: float = 0.016  # text_only: variance of the Gaussian noise on the normalised text embedding
    labelled_fraction: float = 1.0  # share of training images whose captions are used (semi-supervised: e.g. 0.02)
    scst_epochs: int = 0  # SCST epochs after phases 1-2 (self-critical training: a sampled caption's reward minus the
    #   baseline weighs its log-probability); the best SCST epoch is the model
    scst_lr: float = 1e-5  # learning rate at the start of the SCST epochs
    scst_reward: Literal["cider", "clip"] = "cider"  # cider (CIDEr-D against the image's training captions, document
    #   frequencies from all of them: the standard last stage on COCO) | clip (CLIP image-text cosine, on the images
    #   train.labelled_fraction leaves unlabelled: semi-supervised)
    scst_baseline: Literal["greedy", "mean"] = "greedy"  # greedy (the greedy caption's reward, Rennie et al.) | mean
    #   (the image's other samples' mean reward, ruotianluo's "new SCST"; needs scst_samples >= 2)
    scst_samples: int = 1  # captions sampled per image per step (5 with the mean baseline)
    val_images: int = 200  # validation images decoded greedily after each epoch (0 = all)
    loss: LossConfig = field(default_factory=LossConfig)  # docs/method.md §7
