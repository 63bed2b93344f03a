"""What the stage entry points share: parameters, the manifest, and the shard loop."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from features.store import shard_path, shard_slices, write_shard
from pipeline import runtime
from pipeline.params import Params, load_params
from pipeline.provenance import expected
from train.data import CachedFeatures, StoreSpec

log = logging.getLogger(__name__)

MANIFEST = Path("data/manifest.json")


def start() -> Params:
    """Parse params.yaml (fails on any bad key before work starts) and set up the process; the
    model hubs stay offline unless a weight is named by a hub tag rather than a local path."""
    params = load_params(Path("params.yaml"))
    specs = (params.clip.pretrained, params.model.gpt2)
    runtime.setup(hub_wanted=not all(runtime.is_local(s) for s in specs))
    return params


def load_manifest(path: Path = MANIFEST) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no manifest (run the prepare stage)")
    return json.loads(path.read_text())


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def for_each_shard(params: Params, manifest: dict[str, Any], kind: str, provenance: dict[str, Any],
                   compute: Callable[[int, list[dict[str, Any]]], dict[str, np.ndarray]]) -> None:
    """Compute and write every shard of ``kind``: ``compute(shard_index, entries)`` returns the
    arrays of one manifest slice, in order."""
    images = manifest["images"]
    slices = shard_slices(len(images), params.store.shard_size)
    for index, rows in enumerate(tqdm(slices, desc=kind, unit="shard")):
        entries = images[rows]
        arrays = compute(index, entries)
        write_shard(shard_path(Path(params.store.dir), kind, index), kind, [e["id"] for e in entries], arrays,
                    provenance, first_index=rows.start)
    log.info("%s: wrote %d shards for %d images", kind, len(slices), len(images))


def open_features(params: Params, manifest: dict[str, Any]) -> CachedFeatures:
    """The store, validated against the current parameters before any training or decoding."""
    spec = StoreSpec(Path(params.store.dir), params.store.shard_size, [e["id"] for e in manifest["images"]],
                     expected(params))
    features = CachedFeatures(spec)
    features.validate()
    return features


def split_indices(manifest: dict[str, Any], split: str, limit: int = 0) -> list[int]:
    indices = [i for i, e in enumerate(manifest["images"]) if e["split"] == split]
    if not indices:
        raise ValueError(f"the manifest has no {split!r} images")
    return indices[:limit] if limit else indices
