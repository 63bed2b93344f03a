"""The per-image feature computations, one factory per stored kind: the feature stages and the
`caption` command both run these, so new images get exactly the features the model was trained on.

Each factory loads its frozen model once and returns a :data:`~features.shards.Compute`
for :func:`~features.shards.for_each_shard`.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torchvision.transforms.functional import to_tensor

from corpus.datasets import image_paths
from features.clip import encode_images, encode_region_crops, load_clip
from features.detection import pad_regions
from features.detectors import detect_regions, load_detector, region_dim
from features.images import image_batches
from features.keywords import label_keywords, retrieve_keywords
from features.knn import knn_graphs
from features.shards import Compute, read_upstream
from features.store import read_bank
from pipeline.params import Params
from pipeline.paths import keyword_banks
from pipeline.provenance import expected, keyword_bank

Manifest = dict[str, Any]


def clip_image(params: Params, manifest: Manifest, device: torch.device) -> Compute:
    clip = load_clip(params.clip, device, params.store.precision)

    def compute(shard: int, entries: list[dict], progress) -> tuple[dict[str, np.ndarray], dict[int, str]]:
        arrays, errors = encode_images(clip, image_paths(manifest, entries), params.clip.batch_size,
                                       params.store.num_workers, progress, params.clip.cache_tokens)
        return {name: array.astype(np.float16) for name, array in arrays.items()}, errors

    return compute


def regions(params: Params, manifest: Manifest, device: torch.device) -> Compute:
    detector, _ = load_detector(params.regions, device, params.store.precision)
    dim = region_dim(detector, params.regions)
    max_side = 2 * params.regions.max_size  # decode huge photos at reduced size; the detector shrinks them anyway

    def compute(shard: int, entries: list[dict], progress) -> tuple[dict[str, np.ndarray], dict[int, str]]:
        paths = image_paths(manifest, entries)
        found, sizes, errors = [None] * len(paths), np.zeros((len(paths), 2), np.int32), {}
        for batch in image_batches(paths, to_tensor, params.regions.batch_size, params.store.num_workers, max_side):
            good = [d for d in batch if d.image is not None]
            errors.update({d.index: d.error for d in batch if d.image is None})
            results = detect_regions(detector, [d.image.to(device) for d in good], params.regions) if good else []
            for d, result in zip(good, results):
                scale = np.array([d.size[1] / d.image.shape[-1], d.size[0] / d.image.shape[-2]] * 2, np.float32)
                result.boxes *= scale  # to the original image's pixels
                found[d.index], sizes[d.index] = result, d.size
            progress(len(batch))
        return {**pad_regions(found, params.regions.max_regions, dim), "image_sizes": sizes}, errors

    return compute


def knn(params: Params, manifest: Manifest, device: torch.device) -> Compute:
    record = expected(params)["regions"]

    def compute(shard: int, entries: list[dict], progress) -> tuple[dict[str, np.ndarray], dict[int, str]]:
        upstream, errors = read_upstream(params.store, "regions", shard, record, entries,
                                         ("features", "boxes", "counts", "image_sizes"))
        neighbors, weights = knn_graphs(upstream["features"], upstream["boxes"], upstream["counts"],
                                        upstream["image_sizes"], params.knn)
        progress(len(entries))
        return {"neighbors": neighbors, "weights": weights.astype(np.float16)}, errors

    return compute


def region_keywords(params: Params, manifest: Manifest, device: torch.device) -> Compute:
    cfg, record = params.keywords, expected(params)["regions"]
    if cfg.local_source not in ("labels", "retrieval"):
        raise ValueError(f"keywords.local_source: unknown {cfg.local_source!r} (labels | retrieval)")
    if cfg.local_source == "retrieval":
        clip = load_clip(params.clip, device, params.store.precision)
        _, bank = read_bank(keyword_banks(params.store.dir), "object", keyword_bank(params))

    def compute(shard: int, entries: list[dict], progress) -> tuple[dict[str, np.ndarray], dict[int, str]]:
        upstream, errors = read_upstream(params.store, "regions", shard, record, entries, ("boxes", "counts", "labels", "scores"))
        if cfg.local_source == "labels":
            ids, scores = label_keywords(upstream["labels"], upstream["scores"])
        else:
            crops, crop_errors = encode_region_crops(clip, image_paths(manifest, entries), upstream["boxes"],
                                                     upstream["counts"], params.store.num_workers)
            errors.update(crop_errors)
            real = np.arange(crops.shape[1])[None, :] < upstream["counts"][:, None]  # (n, N)
            real[list(errors)] = False
            ids = np.full((*real.shape, cfg.retrieval_k), -1, np.int32)
            scores = np.zeros((*real.shape, cfg.retrieval_k), np.float32)
            if real.any():
                ids[real], scores[real] = retrieve_keywords(crops[real], bank, cfg.retrieval_k)
        progress(len(entries))
        return {"ids": ids, "scores": scores.astype(np.float16)}, errors

    return compute


def region_clip(params: Params, manifest: Manifest, device: torch.device) -> Compute:
    """CLIP image embeddings of every stored region's crop (what the box head forgets, such as
    colour, CLIP keeps)."""
    clip, record = load_clip(params.clip, device, params.store.precision), expected(params)["regions"]

    def compute(shard: int, entries: list[dict], progress) -> tuple[dict[str, np.ndarray], dict[int, str]]:
        upstream, errors = read_upstream(params.store, "regions", shard, record, entries, ("boxes", "counts"))
        crops, crop_errors = encode_region_crops(clip, image_paths(manifest, entries), upstream["boxes"],
                                                 upstream["counts"], params.store.num_workers)
        errors.update(crop_errors)
        crops[np.arange(crops.shape[1])[None, :] >= upstream["counts"][:, None]] = 0  # padding: zeros, not NaN
        progress(len(entries))
        return {"embeddings": crops.astype(np.float16)}, errors

    return compute


# kind → factory, in dependency order: what `caption` runs for a new image (clip_text is of captions)
IMAGE_FEATURES: dict[str, Callable[[Params, Manifest, torch.device], Compute]] = {
    "clip_image": clip_image, "regions": regions, "knn": knn, "region_keywords": region_keywords,
    "region_clip": region_clip,
}
