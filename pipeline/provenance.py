"""What each kind of stored feature depends on: written by the producing stage, checked by every
reader. Derived from the parameters here, at the stage layer, so both sides agree."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

from features.store import KINDS
from pipeline.params import Params


def expected(p: Params) -> dict[str, dict[str, Any]]:
    """kind → provenance record. A downstream kind includes its upstream's record."""
    regions = p.regions.identity()
    records = {
        "clip_image": {**p.clip.identity(), "clip.cache_tokens": p.clip.cache_tokens},
        "regions": regions,
        "knn": {**regions, **p.knn.identity()},
        "clip_text": {**p.clip.identity(), "prepare": asdict(p.prepare)},
        "region_keywords": {**regions, **keyword_bank(p),
                            "keywords.local": {"source": p.keywords.local_source, "k": p.keywords.retrieval_k}},
        "region_clip": {**regions, **p.clip.identity()},
    }
    assert set(records) == set(KINDS)
    return records


BANK_KEYS = ("scene_bank", "scene_bank_size", "min_count", "prompt", "object_bank")


def keyword_bank(p: Params) -> dict[str, Any]:
    """What the keyword banks depend on (the keys the clip_text stage lists in dvc.yaml)."""
    keywords = {k: v for k, v in asdict(p.keywords).items() if k in BANK_KEYS}
    return {**p.clip.identity(), "keywords": keywords, "regions.classes": p.regions.classes}
