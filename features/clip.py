"""CLIP image and text embeddings through open_clip.

Loading follows open_clip's own conventions, so real and demo models take the same path:
``model`` is a built-in config name (``ViT-B-32``) or one registered from ``config_file``;
``pretrained`` is an open_clip tag (``openai``, needs the hub) or a local weights file.
``tokenizer`` optionally names a local Hugging Face tokenizer folder (open_clip's HFTokenizer),
for custom configs whose vocabulary is not CLIP's BPE.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import open_clip
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from features.config import ClipConfig
from features.images import ImageError, image_batches, load_rgb, original_size
from features.precision import autocast, check_precision

log = logging.getLogger(__name__)

VERSION = 1  # bump when a change here changes the embeddings produced (recorded in provenance)
TAIL_BLOCKS = 2  # the paper fine-tunes the last two vision blocks; the cache holds the tokens entering them


@dataclass
class Clip:
    model: open_clip.CLIP
    preprocess: Callable
    tokenizer: Callable[[Sequence[str]], torch.Tensor]
    device: torch.device
    model_name: str
    precision: str = "fp32"  # what the encoders run at (features/precision.py)

    @property
    def dim(self) -> int:
        return int(self.model.text_projection.shape[1]) if isinstance(self.model.text_projection, torch.Tensor) \
            else int(self.model.text_projection.out_features)


def clip_activation(cfg: ClipConfig) -> str:
    """The activation the network is built with, as its weights were trained: ``quick_gelu`` or
    ``gelu``. open_clip builds e.g. ``ViT-B-32`` with GELU and only warns when the ``openai`` tag's
    weights (trained with QuickGELU) are loaded into it; here the tag decides, and a setting that
    contradicts it is refused."""
    _register_config(cfg)
    model_cfg = open_clip.get_model_config(cfg.model) or {}
    built = "quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu"
    tagged = open_clip.get_pretrained_cfg(cfg.model, cfg.pretrained) if cfg.pretrained else {}
    trained = ("quick_gelu" if tagged.get("quick_gelu", False) else "gelu") if tagged else None
    wanted = trained or built if cfg.activation == "auto" else cfg.activation
    if trained and wanted != trained:
        raise ValueError(f"clip.activation: {cfg.activation} contradicts pretrained tag {cfg.pretrained!r} of "
                         f"{cfg.model}, whose weights were trained with {trained}")
    if wanted == "gelu" and built == "quick_gelu":
        raise ValueError(f"clip.activation: gelu, but model config {cfg.model!r} builds QuickGELU")
    return wanted


def _register_config(cfg: ClipConfig) -> None:
    if cfg.config_file:
        path = Path(cfg.config_file)
        if not path.is_file():
            raise FileNotFoundError(f"clip.config_file: {path} not found")
        open_clip.add_model_config(path)
        if path.stem != cfg.model:
            raise ValueError(f"clip.model is {cfg.model!r} but clip.config_file registers {path.stem!r}")


def load_clip(cfg: ClipConfig, device: torch.device, precision: str = "fp32") -> Clip:
    """CLIP as ``cfg`` names it, built with the activation its weights were trained with; its
    encoders run at ``precision`` (fp32 | bf16 | fp16, :mod:`features.precision`)."""
    check_precision(precision, device)
    quick_gelu = clip_activation(cfg) == "quick_gelu"
    model, _, preprocess = open_clip.create_model_and_transforms(cfg.model, pretrained=cfg.pretrained or None,
                                                                 force_quick_gelu=quick_gelu)
    if cfg.tokenizer:
        context_length = model.context_length
        tokenizer = open_clip.tokenizer.HFTokenizer(cfg.tokenizer, context_length=context_length)
    else:
        tokenizer = open_clip.get_tokenizer(cfg.model)
    return Clip(model.eval().to(device), preprocess, tokenizer, device, cfg.model, precision)


class LastBlocksInput:
    """Captures the tokens entering the last ``n`` vision transformer blocks during
    ``encode_image`` (a forward pre-hook: one pass yields both the embedding and the tokens)."""

    def __init__(self, visual: nn.Module, n: int = TAIL_BLOCKS):
        self.transformer = visual.transformer
        self.tokens: torch.Tensor | None = None
        self.handle = self.transformer.resblocks[-n].register_forward_pre_hook(self._keep)

    def _keep(self, module: nn.Module, args: tuple) -> None:
        x = args[0]
        self.tokens = x if getattr(self.transformer, "batch_first", True) else x.transpose(0, 1)  # (B, L, width)

    def remove(self) -> None:
        self.handle.remove()


class ClipTail(nn.Module):
    """The end of CLIP's image encoder: the last ``n`` transformer blocks, the pooling, ``ln_post``
    and the projection. From the cached tokens entering those blocks (B, L, width) it finishes
    ``encode_image`` exactly; the captioner owns a copy of it to fine-tune them. Holds references
    to ``visual``'s modules (deep-copy it to train it apart from the extractor)."""

    def __init__(self, visual: nn.Module, n: int = TAIL_BLOCKS):
        super().__init__()
        if getattr(visual, "attn_pool", None) is not None:
            raise ValueError("CLIP models with attention pooling (CoCa) have no fine-tunable tail here")
        self.blocks = nn.ModuleList(visual.transformer.resblocks[-n:])
        self.ln_post, self.proj = visual.ln_post, visual.proj
        self.batch_first = getattr(visual.transformer, "batch_first", True)
        self.pool_type, self.ln_after_pool = visual.pool_type, visual.final_ln_after_pool

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens if self.batch_first else tokens.transpose(0, 1)  # blocks take (B, L, w) or (L, B, w)
        for block in self.blocks:
            x = block(x)
        x = x if self.batch_first else x.transpose(0, 1)  # (B, L, width)
        if not self.ln_after_pool:
            x = self.ln_post(x)
        pooled = x[:, 1:].mean(dim=1) if self.pool_type == "avg" else x[:, 0] if self.pool_type == "tok" else x
        if self.ln_after_pool:
            pooled = self.ln_post(pooled)
        return pooled @ self.proj if self.proj is not None else pooled  # (B, d)


def encode_from_tokens(visual: nn.Module, tokens: torch.Tensor, n: int = TAIL_BLOCKS) -> torch.Tensor:
    """Finish ``encode_image`` from cached tokens (B, L, width) entering the last ``n`` blocks."""
    return ClipTail(visual, n)(tokens)


def tail_spec(clip: Clip) -> dict:
    """What rebuilds the tail's architecture without the extractor's files (kept in a model folder)."""
    config = open_clip.get_model_config(clip.model_name)
    if config is None:
        raise ValueError(f"no open_clip config for {clip.model_name!r}")
    quick_gelu = any(isinstance(m, open_clip.transformer.QuickGELU) for m in clip.model.visual.modules())
    return {"model": clip.model_name, "config": config, "quick_gelu": quick_gelu}


def build_tail(spec: dict, n: int = TAIL_BLOCKS) -> ClipTail:
    """A tail of the architecture ``spec`` describes, randomly initialised (load weights into it)."""
    folder = Path(tempfile.mkdtemp())
    try:  # open_clip registers configs from files; the spec's name keeps weights keyed alike
        (folder / f"{spec['model']}.json").write_text(json.dumps(spec["config"]))
        open_clip.add_model_config(folder / f"{spec['model']}.json")
    finally:
        shutil.rmtree(folder)
    model = open_clip.create_model(spec["model"], pretrained=None, force_quick_gelu=spec["quick_gelu"])
    return ClipTail(model.visual, n)


@torch.no_grad()
def encode_images(clip: Clip, paths: Sequence[Path], batch_size: int, num_workers: int,
                  progress: Callable[[int], object] | None = None,
                  with_tokens: bool = False) -> tuple[dict[str, np.ndarray], dict[int, str]]:
    """CLIP global embeddings ``embeddings`` (n, d) float32, unnormalised, in the order of
    ``paths`` (with ``with_tokens`` also ``tokens`` (n, L, width): the ViT tokens entering the
    last two blocks), and the unusable files as {index: reason}; their rows are NaN."""
    out = {"embeddings": np.full((len(paths), clip.dim), np.nan, np.float32)}
    capture = LastBlocksInput(clip.model.visual) if with_tokens else None
    errors: dict[int, str] = {}
    max_side = 4 * max(clip.model.visual.image_size)  # decode huge photos at reduced size
    try:
        for batch in image_batches(paths, clip.preprocess, batch_size, num_workers, max_side):
            good = [d for d in batch if d.image is not None]
            errors.update({d.index: d.error for d in batch if d.image is None})
            if good:
                rows = [d.index for d in good]
                images = torch.stack([d.image for d in good]).to(clip.device)
                with autocast(clip.precision, clip.device):
                    out["embeddings"][rows] = clip.model.encode_image(images).float().cpu().numpy()
                if capture is not None:
                    if "tokens" not in out:
                        out["tokens"] = np.full((len(paths), *capture.tokens.shape[1:]), np.nan, np.float32)
                    out["tokens"][rows] = capture.tokens.float().cpu().numpy()
            if progress:
                progress(len(batch))
    finally:
        if capture is not None:
            capture.remove()
    return out, errors


@torch.no_grad()
def encode_texts(clip: Clip, texts: Sequence[str], batch_size: int) -> np.ndarray:
    """CLIP text embeddings (n, d), float32, unnormalised."""
    out = np.zeros((len(texts), clip.dim), np.float32)
    for start in range(0, len(texts), batch_size):
        tokens = clip.tokenizer(list(texts[start:start + batch_size])).to(clip.device)
        with autocast(clip.precision, clip.device):
            out[start:start + len(tokens)] = clip.model.encode_text(tokens).float().cpu().numpy()
    return out


class RegionCrops(Dataset):
    """The region crops of each image, CLIP-preprocessed, decoded in DataLoader workers.
    ``boxes`` (n, N, 4) are in the original image's pixels; ``counts`` (n,) real boxes per image."""

    def __init__(self, paths: Sequence[Path], boxes: np.ndarray, counts: np.ndarray, preprocess: Callable,
                 max_side: int = 2048):
        self.paths, self.boxes, self.counts, self.preprocess, self.max_side = list(paths), boxes, counts, preprocess, max_side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            image = load_rgb(self.paths[i], self.max_side)
            height, _ = original_size(self.paths[i])
        except ImageError as err:
            return i, None, str(err)
        scale = image.size[1] / height  # the decoded image may be smaller than the original
        crops = []
        for x0, y0, x1, y1 in self.boxes[i, : self.counts[i]] * scale:
            box = (int(x0), int(y0), max(int(np.ceil(x1)), int(x0) + 1), max(int(np.ceil(y1)), int(y0) + 1))
            crops.append(self.preprocess(image.crop(box)))
        return i, torch.stack(crops) if crops else torch.zeros(0), ""


@torch.no_grad()
def encode_region_crops(clip: Clip, paths: Sequence[Path], boxes: np.ndarray, counts: np.ndarray,
                        num_workers: int) -> tuple[np.ndarray, dict[int, str]]:
    """CLIP image embeddings of every region crop: (n, N, d), NaN past each image's count and
    for unreadable images (reported as {index: reason})."""
    out = np.full((*boxes.shape[:2], clip.dim), np.nan, np.float32)
    errors: dict[int, str] = {}
    loader = DataLoader(RegionCrops(paths, boxes, counts, clip.preprocess), batch_size=None, num_workers=num_workers)
    for i, crops, error in loader:
        if crops is None:
            errors[i] = error
        elif len(crops):
            with autocast(clip.precision, clip.device):
                out[i, : len(crops)] = clip.model.encode_image(crops.to(clip.device)).float().cpu().numpy()
    return out, errors
