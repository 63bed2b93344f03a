"""What each kind of stored feature depends on: written by the producing stage, checked by every
reader. Derived from the parameters here, at the stage layer, so both sides agree."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

from features import clip, detection, knn
from features.store import KINDS, OPTIONAL_KINDS
from pipeline.params import Params


def expected(p: Params) -> dict[str, dict[str, Any]]:
    """kind → provenance record. A downstream kind includes its upstream's record."""
    regions = {**p.regions.identity(), "store.precision": p.store.precision, "regions.code_version": detection.VERSION}
    records = {
        "clip_image": {**clip_identity(p), "clip.cache_tokens": p.clip.cache_tokens},
        "regions": regions,
        "knn": {**regions, **p.knn.identity(), "knn.code_version": knn.VERSION},
        "clip_text": {**clip_identity(p), "prepare": asdict(p.prepare)},
        "region_keywords": {**regions, **keyword_bank(p),
                            "keywords.local": {"source": p.keywords.local_source, "k": p.keywords.retrieval_k}},
        "region_clip": {**regions, **clip_identity(p)},
    }
    assert set(records) == set(KINDS)
    return records


def stored_kinds(p: Params) -> tuple[str, ...]:
    """The kinds the store holds under these parameters: every kind but the optional ones not asked for."""
    return tuple(k for k in KINDS if k not in OPTIONAL_KINDS or k in p.store.optional_kinds)


BANK_KEYS = ("scene_bank", "scene_bank_size", "min_count", "prompt", "object_bank")


def keyword_bank(p: Params) -> dict[str, Any]:
    """What the keyword banks depend on (the keys the clip_text stage lists in dvc.yaml)."""
    keywords = {k: v for k, v in asdict(p.keywords).items() if k in BANK_KEYS}
    return {**clip_identity(p), "keywords": keywords, "regions.classes": p.regions.classes}


def clip_identity(p: Params) -> dict[str, Any]:
    """What CLIP's embeddings depend on: the configuration's identity, the activation the network
    was built with (features made with the wrong one are refused), the precision it ran at, and
    this code's version."""
    return {**p.clip.identity(), "clip.activation": clip.clip_activation(p.clip), "store.precision": p.store.precision,
            "clip.code_version": clip.VERSION}
