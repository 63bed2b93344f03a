"""The captioner: GAT-LFE → fusion → multi-scale semantic guidance → prefix mapping → GPT-2.

docs/method.md, eqs. 7-15. Everything upstream (CLIP, detector, KNN graphs, keyword embeddings) is
read from the feature store; this module holds only what trains.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch_geometric.utils import scatter
from transformers import AutoConfig, AutoTokenizer, GPT2LMHeadModel, PreTrainedTokenizerBase

from features.clip import ClipTail, build_tail
from features.config import choices
from train.config import ModelConfig
from train.data import Batch
from train.gat import GATEncoder
from train.guidance import GlobalGuidance, GraphKeywords, LocalGuidance, pool_local_keywords
from train.mapping import MAPPERS, MLPMapper, TransformerMapper
from train.region_graph import (
    EDGE_GEOMETRY,
    SPATIAL_MODES,
    BoxEmbedding,
    RegionTokens,
    SpatialContext,
    edge_geometry,
    reorder_slots,
)


@dataclass(frozen=True)
class FeatureDims:
    """Shapes the model takes from the store."""

    clip: int  # d: CLIP embedding width
    region: int  # D: region feature width (of model.region_features)
    scene_bank: int  # S: global keywords
    object_bank: int  # C: object keywords (label ids)
    keyword_bank: int = 0  # K: keywords selectable by model.condition keywords

    @classmethod
    def of(cls, item: dict[str, Any], region_features: str, scene_bank: int, object_bank: int,
           keyword_bank: int = 0) -> FeatureDims:
        """The widths of one store item (``train.data``'s), the region width as model.region_features reads it."""
        region_inputs = {"detector": ["features"], "clip": ["region_clip"], "both": ["features", "region_clip"]}
        return cls(clip=len(item["clip"]), region=sum(item[k].shape[1] for k in region_inputs[region_features]),
                   scene_bank=scene_bank, object_bank=object_bank, keyword_bank=keyword_bank)


@dataclass
class Prefix:
    embeddings: torch.Tensor  # (B, L_p, h)
    fused: torch.Tensor | None  # (B, d) f_fused, for L_align (None: nothing trainable before the mapper)
    gate: torch.Tensor | None  # (B, d) local gate activations, for L_gate
    scene_attention: torch.Tensor | None  # (B, S)
    keyword_ids: torch.Tensor | None = None  # (B, k) condition keywords: the keywords GPT-2 was given
    region_slots: torch.Tensor | None = None  # (B, slots) region tokens: the node in each slot (-1: empty)
    local_attention: torch.Tensor | None = None  # (B, C) local_text graph: the nodes' attention over the object bank


CONDITIONS = choices(ModelConfig, "condition")
PREFIX_REGIONS = choices(ModelConfig, "prefix_regions")
REGION_FEATURES = choices(ModelConfig, "region_features")
SPATIAL_TOKEN_ORDERS = choices(ModelConfig, "spatial_token_order")


class Captioner(nn.Module):
    def __init__(self, cfg: ModelConfig, dims: FeatureDims, gpt2: GPT2LMHeadModel,
                 tokenizer: PreTrainedTokenizerBase, scene_bank: torch.Tensor | None = None,
                 object_bank: torch.Tensor | None = None, clip_tail: ClipTail | None = None,
                 keyword_bank: torch.Tensor | None = None):
        super().__init__()
        self.cfg, self.dims, self.gpt2, self.tokenizer = cfg, dims, gpt2, tokenizer
        if cfg.finetune_clip != (clip_tail is not None):
            raise ValueError("model.finetune_clip needs a CLIP tail (and a tail needs model.finetune_clip)")
        self.clip_tail = clip_tail  # CLIP's last blocks: recomputes the image embedding from cached tokens
        d, h = dims.clip, gpt2.config.n_embd
        if cfg.gat and not cfg.regions:
            raise ValueError("model.gat needs model.regions (the GAT runs over the regions)")
        _check_condition(cfg, dims)
        _check_regions(cfg)
        self.box_embedding = BoxEmbedding(dims.region) if cfg.box_embedding else None
        self.adapter = nn.Linear(dims.region, d) if cfg.region_adapter else None  # CrossModal_Adapter: D → d
        region_in = d if self.adapter is not None else dims.region
        edge_dim = cfg.gat_edge_weights + EDGE_GEOMETRY * cfg.edge_geometry
        self.gat = (GATEncoder(region_in, cfg.gat_hidden, cfg.gat_heads, cfg.gat_layers, cfg.gat_dropout,
                               edge_dim) if cfg.gat else None)
        region_out = self.gat.out_dim if self.gat else region_in
        self.fuse = nn.Linear(d + region_out, d) if cfg.regions else None  # eq. 10: W_fused
        # banks left out (None) are zeros until load_state_dict fills them from a saved folder
        if scene_bank is None:
            scene_bank = torch.zeros(dims.scene_bank, d)
        self.global_guidance = GlobalGuidance(scene_bank) if cfg.global_guidance else None
        self.local_guidance = LocalGuidance(d) if cfg.local_guidance else None
        if object_bank is None:
            object_bank = torch.zeros(dims.object_bank, d)
        graph_text = cfg.local_guidance and cfg.local_text == "graph"
        self.graph_keywords = GraphKeywords(region_out, object_bank) if graph_text else None
        if cfg.local_guidance and not graph_text:
            self.register_buffer("object_bank", object_bank)
        if cfg.condition == "keywords":  # the selectable keywords' CLIP text embeddings, unit-normalised
            bank = keyword_bank if keyword_bank is not None else torch.zeros(dims.keyword_bank, d)
            self.register_buffer("keyword_bank", F.normalize(bank, dim=-1))
        c_dim = d * (1 + cfg.global_guidance + cfg.local_guidance)  # eq. 13: C_fused
        if cfg.condition == "keywords":
            c_dim = d * cfg.keyword_top_k  # the chosen keywords' embeddings side by side
        if cfg.mapping == "mlp":  # eq. 14
            self.mapping = MLPMapper(c_dim, h, cfg.prefix_length, cfg.mapping_hidden)
        elif cfg.mapping == "transformer":
            self.mapping = TransformerMapper(c_dim, h, cfg.prefix_length, cfg.mapping_clip_length, cfg.mapping_layers,
                                             gpt2.config.n_head)
        else:
            raise ValueError(f"model.mapping: unknown {cfg.mapping!r}; known: {MAPPERS}")
        # built last, so a seed gives the other modules the same initial weights with or without it
        self.token_skip = cfg.region_token_skip and self.gat is not None
        token_dim = region_out + region_in * self.token_skip
        self.region_tokens = (RegionTokens(token_dim, h, cfg.region_tokens, cfg.region_order)
                              if cfg.prefix_regions == "tokens" else None)
        self.spatial_context = (SpatialContext(h, cfg.spatial_directions, cfg.spatial_context)
                                if cfg.spatial_directions else None)

    @property
    def prefix_tokens(self) -> int:
        """Length of every prefix: the mapped tokens, then the region tokens."""
        slots = self.region_tokens.slots * (1 + self.cfg.spatial_tokens) if self.region_tokens else 0
        return self.cfg.prefix_length + slots

    def prefix(self, batch: Batch) -> Prefix:
        if self.cfg.condition == "keywords":
            return self.keyword_prefix(batch.clip)
        clip = self.clip_tail(batch.clip_tokens) if self.clip_tail is not None else batch.clip  # (B, d)
        if self.cfg.normalize_clip:
            clip = F.normalize(clip, dim=-1)
        fused, raw, regions = clip, None, None
        if self.fuse is not None:
            raw = self.region_features(batch)  # (V, D)
            regions, _ = self.enhance(raw, batch)  # (V, ·)
            pooled = scatter(regions, batch.node_batch, dim=0, dim_size=clip.shape[0], reduce="mean")
            fused = self.fuse(torch.cat([clip, pooled], dim=-1))  # eq. 10
        parts, gate, scene_attention = [fused], None, None
        if self.global_guidance is not None:
            guide, scene_attention = self.global_guidance(fused)
            parts.append(guide)
        local_attention = None
        if self.local_guidance is not None:
            local_text, local_attention = self.local_text(batch, regions, clip.shape[0])  # (B, d)
            guide, gate = self.local_guidance(fused, local_text)
            parts.append(guide)
        embeddings = self.mapping(torch.cat(parts, dim=-1))  # (B, L_p, h)
        if self.region_tokens is not None:  # the paper's prefix, then one token per region
            token_input = torch.cat([raw, regions], dim=-1) if self.token_skip else regions
            node_tokens = self.region_tokens.project(token_input)  # (V, h)
            tokens, slots = self.place_region_tokens(node_tokens, batch, clip.shape[0])  # (B, S, h), (B, S)
            embeddings = torch.cat([embeddings, tokens], dim=1)  # (B, L_p + S, h)
            return Prefix(embeddings, fused, gate, scene_attention, region_slots=slots, local_attention=local_attention)
        return Prefix(embeddings, fused, gate, scene_attention, local_attention=local_attention)

    def local_text(self, batch: Batch, regions: torch.Tensor | None,
                   n_images: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """f_local_text (B, d) by model.local_text: the store's region keywords pooled, or the object
        keywords nearest the enhanced regions (V, ·), with their attention (B, C)."""
        if self.graph_keywords is not None:
            return self.graph_keywords(regions, batch.node_batch, n_images)
        scores = batch.keyword_scores  # (B, N, k)
        weights = scores.clamp_min(0) if self.cfg.local_pooling == "score" else torch.ones_like(scores)
        return pool_local_keywords(self.object_bank, batch.keyword_ids, weights), None

    def place_region_tokens(self, node_tokens: torch.Tensor, batch: Batch,
                            n_images: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Region tokens (V, h) with their spatial context, in slots: (B, S, h) and the node of
        each slot (B, S). With ``spatial_tokens`` the slots are the regions' own tokens, then as
        many context tokens (S = 2 × region_tokens), a node filling one slot in each half: in the
        same order, or (``spatial_token_order: top_down``) top to bottom, each context token then
        also holding its region's own token, so that GPT-2's positions say which region is higher
        as the first half's say which is further left."""
        node_batch, geometry = batch.node_batch, batch.geometry
        slots = self.region_tokens.table(node_batch, geometry, n_images)  # (B, S)
        if self.spatial_context is None:
            return self.region_tokens(node_tokens, slots), slots
        context = self.spatial_context(node_tokens, node_batch, geometry)  # (V, h)
        if not self.cfg.spatial_tokens:
            return self.region_tokens(node_tokens + context, slots), slots
        own = self.region_tokens(node_tokens, slots)
        if self.cfg.spatial_token_order == "same":
            return torch.cat([own, self.region_tokens(context, slots)], dim=1), torch.cat([slots, slots], dim=1)
        vertical = reorder_slots(slots, geometry, "top_down")  # the same regions
        around = self.region_tokens(node_tokens + context, vertical)
        return torch.cat([own, around], dim=1), torch.cat([slots, vertical], dim=1)

    def keyword_prefix(self, clip: torch.Tensor) -> Prefix:
        """Keyword-only generation: the image picks its top-k keywords by CLIP image-text cosine
        similarity and is not seen again; GPT-2 is conditioned on those keywords' text embeddings,
        most similar first. The choice is not differentiable: only the mapper and GPT-2 train."""
        similarity = F.normalize(clip, dim=-1) @ self.keyword_bank.T  # (B, K)
        ids = similarity.topk(self.cfg.keyword_top_k, dim=-1).indices  # (B, k), most similar first
        chosen = self.keyword_bank[ids]  # (B, k, d)
        return Prefix(self.mapping(chosen.flatten(1)), None, None, None, ids)

    def region_features(self, batch: Batch) -> torch.Tensor:
        """Every region of the batch as the model reads it (model.region_features), its box
        embedded when asked, mapped to CLIP's width by the adapter when on: (V, D) or (V, d)."""
        x = {"detector": lambda: batch.region_features, "clip": lambda: batch.region_clip,
             "both": lambda: torch.cat([batch.region_features, batch.region_clip], dim=-1)}[self.cfg.region_features]()
        if self.box_embedding is not None:
            x = x + self.box_embedding(batch.geometry)
        return self.adapter(x) if self.adapter is not None else x

    def enhanced_regions(self, batch: Batch,
                         return_attention: bool = False) -> tuple[torch.Tensor, list]:
        """Every region of the batch through the GAT when on: (V, ·), and the GAT's attention per
        layer when ``return_attention``."""
        return self.enhance(self.region_features(batch), batch, return_attention)

    def enhance(self, x: torch.Tensor, batch: Batch,
                return_attention: bool = False) -> tuple[torch.Tensor, list]:
        """Region features x (V, D) → the GAT's output (V, hidden*heads) (x itself without GAT)."""
        if self.gat is None:
            return x, []
        attributes = []
        if self.cfg.gat_edge_weights:
            attributes.append(batch.edge_weight[:, None])
        if self.cfg.edge_geometry:
            attributes.append(edge_geometry(batch.geometry, batch.edge_index))
        edge_attr = torch.cat(attributes, dim=-1) if attributes else None  # (E, edge_dim)
        return self.gat(x, batch.edge_index, edge_attr, return_attention)

    def caption_logits(self, prefix: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: prefix (B, L_p, h), tokens/mask (B, T) → logits for the tokens (B, T, V)."""
        return self.caption_forward(prefix, tokens, mask)[0]

    def caption_forward(self, prefix: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                        return_attention: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`caption_logits`, and with ``return_attention`` the last GPT-2 layer's attention
        from each token to each prefix position (B, heads, T, L_p) (token t as input: it predicts t + 1)."""
        if return_attention and self.gpt2.config._attn_implementation != "eager":
            self.gpt2.set_attn_implementation("eager")  # only the eager implementation returns attention weights
        embeds = torch.cat([prefix, self.gpt2.transformer.wte(tokens)], dim=1)
        attention = torch.cat([torch.ones(prefix.shape[:2], dtype=mask.dtype, device=mask.device), mask], dim=1)
        out = self.gpt2(inputs_embeds=embeds, attention_mask=attention, output_attentions=return_attention)
        p = prefix.shape[1]
        weights = out.attentions[-1][:, :, p:, :p] if return_attention else None
        return out.logits[:, p - 1:-1], weights  # position t predicts token t

    @classmethod
    def from_pretrained(cls, name_or_folder: str | Path, revision: str | None = None) -> "Captioner":
        """As transformers' ``from_pretrained``: a model folder written by :meth:`save` at a local
        path, or a Hugging Face Hub repository holding one (downloaded into the hub cache once;
        offline, a cached one is read). The features it is given must match its config.json's
        ``features`` provenance (the pipeline checks that)."""
        return load_captioner(model_folder(name_or_folder, revision))[0]

    def save(self, folder: Path, extra: dict | None = None) -> None:
        """One self-describing folder: config.json, weights.safetensors, gpt2/ (with tokenizer).
        Written beside the target and swapped in, so the folder is always a complete model."""
        folder = Path(folder)
        tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.gpt2.save_pretrained(tmp / "gpt2")
        self.tokenizer.save_pretrained(tmp / "gpt2")
        state = {k: v.contiguous() for k, v in self.state_dict().items() if not k.startswith("gpt2.")}
        save_file(state, str(tmp / "weights.safetensors"))
        config = {"model": asdict(self.cfg), "dims": asdict(self.dims), **(extra or {})}
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)


def _check_regions(cfg: ModelConfig) -> None:
    if cfg.region_features not in REGION_FEATURES:
        raise ValueError(f"model.region_features: unknown {cfg.region_features!r}; known: {REGION_FEATURES}")
    if cfg.prefix_regions not in PREFIX_REGIONS:
        raise ValueError(f"model.prefix_regions: unknown {cfg.prefix_regions!r}; known: {PREFIX_REGIONS}")
    uses_regions = cfg.prefix_regions == "tokens" or cfg.box_embedding or cfg.edge_geometry
    if uses_regions and not cfg.regions:
        raise ValueError("model.prefix_regions tokens, box_embedding and edge_geometry need model.regions")
    if cfg.edge_geometry and not cfg.gat:
        raise ValueError("model.edge_geometry needs model.gat (the geometry is an attribute of the GAT's edges)")
    if cfg.spatial_directions and cfg.prefix_regions != "tokens":
        raise ValueError(f"model.spatial_directions: {cfg.spatial_directions} needs prefix_regions tokens "
                         "(the context is added to region tokens)")
    if cfg.spatial_tokens and not cfg.spatial_directions:
        raise ValueError("model.spatial_tokens needs model.spatial_directions > 0 (the context its tokens hold)")
    if cfg.spatial_token_order not in SPATIAL_TOKEN_ORDERS:
        raise ValueError(f"model.spatial_token_order: unknown {cfg.spatial_token_order!r}; known: {SPATIAL_TOKEN_ORDERS}")
    if cfg.spatial_context not in SPATIAL_MODES:
        raise ValueError(f"model.spatial_context: unknown {cfg.spatial_context!r}; known: {SPATIAL_MODES}")
    if (cfg.region_adapter or cfg.local_text == "graph") and not cfg.regions:
        raise ValueError("model.region_adapter and model.local_text graph need model.regions (they read the regions)")
    if cfg.prefix_regions == "tokens" and cfg.region_tokens < 1:
        raise ValueError(f"model.region_tokens: {cfg.region_tokens} (need at least 1)")


def _check_condition(cfg: ModelConfig, dims: FeatureDims) -> None:
    if cfg.condition not in CONDITIONS:
        raise ValueError(f"model.condition: unknown {cfg.condition!r}; known: {CONDITIONS}")
    if cfg.condition != "keywords":
        return
    if cfg.regions or cfg.global_guidance or cfg.local_guidance or cfg.finetune_clip:
        raise ValueError("model.condition keywords: GPT-2 sees only keywords, so it needs model.regions, "
                         "global_guidance, local_guidance and finetune_clip all false")
    if not 0 < cfg.keyword_top_k <= dims.keyword_bank:
        raise ValueError(f"model.keyword_top_k: {cfg.keyword_top_k} is not within 1..{dims.keyword_bank} "
                         "(the keywords available)")


def load_gpt2(name_or_folder: str) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerBase]:
    """GPT-2 and its tokenizer from a local folder (or a hub name where a hub is reachable)."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = AutoConfig.from_pretrained(name_or_folder)
    if config.activation_function == "gelu_new":  # GPT-2's tanh-approximate GELU: the same function as one
        config.activation_function = "gelu_pytorch_tanh"  # fused kernel instead of five ops (~8% of a CPU step)
    return GPT2LMHeadModel.from_pretrained(name_or_folder, config=config), tokenizer


def model_folder(name_or_folder: str | Path, revision: str | None = None) -> Path:
    """A model folder at a local path, or a Hugging Face Hub repository's snapshot (downloaded
    into the hub cache once; offline, a cached one is read)."""
    folder = Path(name_or_folder)
    if folder.is_dir():
        return folder
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(name_or_folder), revision=revision))
    except Exception as err:  # an invalid id, offline without a cached copy, a missing repository: many types
        raise FileNotFoundError(f"{name_or_folder}: no such model folder, nor a Hub model available here "
                                f"({_first_line(err)})") from err


def push_to_hub(folder: Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload a model folder (models/release: the model and its README.md model card) to a Hub
    repository, created if missing; needs a network and a write token. Returns the commit's URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    return api.upload_folder(repo_id=repo_id, folder_path=str(folder)).commit_url


def load_captioner(folder: Path) -> tuple[Captioner, dict]:
    """Load a folder written by :meth:`Captioner.save`; returns the model and its config. A damaged
    or foreign folder, and weights that are not all finite, are refused (ValueError) naming the file."""
    folder = Path(folder)
    config = read_config(folder / "config.json")
    try:
        gpt2, tokenizer = load_gpt2(str(folder / "gpt2"))
    except Exception as err:  # transformers and tokenizers raise many types for a missing or garbled file
        raise ValueError(f"{folder / 'gpt2'}: cannot load GPT-2 or its tokenizer ({_first_line(err)})") from err
    weights = folder / "weights.safetensors"
    try:
        state = load_file(str(weights))
    except (OSError, SafetensorError) as err:
        raise ValueError(f"{weights}: not a readable safetensors file ({_first_line(err)})") from err
    try:  # the config's values build the model the weights must fit
        cfg = ModelConfig(**config["model"])
        tail = build_tail(config["clip_tail"]) if cfg.finetune_clip else None
        model = Captioner(cfg, FeatureDims(**config["dims"]), gpt2, tokenizer, clip_tail=tail)
        missing, unexpected = model.load_state_dict(state, strict=False)
    except (KeyError, TypeError, ValueError, RuntimeError, OverflowError) as err:
        raise ValueError(f"{folder / 'config.json'}: does not describe these weights ({_first_line(err)})") from err
    if unexpected or any(not k.startswith("gpt2.") for k in missing):
        raise ValueError(f"{folder}: weights do not fit the config (missing {missing}, unexpected {unexpected})")
    broken = [name for name, value in model.state_dict().items() if value.is_floating_point() and not value.isfinite().all()]
    if broken:
        raise ValueError(f"{folder}: {len(broken)} weight tensors hold NaN/Inf (e.g. {broken[0]}); "
                         "the model is unusable — retrain it")
    return model.eval(), config


def read_config(path: Path) -> dict:
    """A model folder's config.json, or a ValueError/FileNotFoundError of one line naming it."""
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path.parent}: not a trained model folder (no config.json)") from err
    except (OSError, ValueError, RecursionError) as err:  # unreadable, not UTF-8, not JSON, nested too deep
        raise ValueError(f"{path}: not valid JSON ({_first_line(err)})") from err
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not a captioner's config (a JSON {type(config).__name__}, not an object)")
    return config


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
