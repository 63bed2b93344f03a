"""What training and decoding read: the store validated against the parameters, a split's
usable images, and CLIP's frozen text tower."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from features.clip import encode_texts, load_clip
from pipeline.params import Params
from pipeline.provenance import expected
from train.data import CachedFeatures, StoreSpec
from train.decode import TextEncoder


def open_features(params: Params, manifest: dict[str, Any], with_tokens: bool = False,
                  with_text: bool = True, with_region_clip: bool = False) -> CachedFeatures:
    """The store, validated against the current parameters before any training or decoding;
    ``with_tokens`` also serves the cached CLIP tokens (for a model that fine-tunes CLIP's tail),
    ``with_text`` the captions' CLIP embeddings, ``with_region_clip`` the region crops'."""
    spec = StoreSpec(Path(params.store.dir), params.store.shard_size, [e["id"] for e in manifest["images"]],
                     expected(params), params.store.max_open_shards)
    features = CachedFeatures(spec, with_tokens, with_text, with_region_clip)
    features.validate()
    return features


def split_indices(manifest: dict[str, Any], split: str, features: CachedFeatures, limit: int = 0) -> list[int]:
    """Manifest indices of a split whose features are all valid (rejected images are left out)."""
    indices = [i for i, e in enumerate(manifest["images"]) if e["split"] == split and features.is_valid(i)]
    if not indices:
        raise ValueError(f"the manifest has no usable {split!r} images")
    return indices[:limit] if limit else indices


def text_encoder(params: Params, device: torch.device) -> TextEncoder:
    """The pipeline's frozen CLIP text tower (CLIPScore, CLIP re-ranking, the SCST reward; the
    images' side is cached)."""
    clip = load_clip(params.clip, device, params.store.precision)
    return lambda texts: encode_texts(clip, texts, params.clip.batch_size)
