"""What each kind of stored feature depends on: written by the producing stage, checked by every
reader. Derived from the parameters here, at the stage layer, so both sides agree."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

from features.store import KINDS
from features.weights import weights_identity
from pipeline.params import Params


def _regions(p: Params) -> dict[str, Any]:
    settings = {k: v for k, v in asdict(p.regions).items() if k not in ("weights", "batch_size")}
    return {"regions.weights": weights_identity(p.regions.weights), "regions.settings": settings}


def expected(p: Params) -> dict[str, dict[str, Any]]:
    """kind → provenance record. A downstream kind includes its upstream's record."""
    clip = p.clip.identity()
    regions = _regions(p)
    knn = {**regions, "knn": {k: v for k, v in asdict(p.knn).items() if k not in ("backend", "batch_images")}}
    text = {**clip, "prepare": asdict(p.prepare)}
    records = {"clip_image": clip, "regions": regions, "knn": knn, "clip_text": text}
    assert set(records) == set(KINDS)
    return records


def keyword_bank(p: Params) -> dict[str, Any]:
    return {**p.clip.identity(), "keywords": asdict(p.keywords), "regions.classes": p.regions.classes}
