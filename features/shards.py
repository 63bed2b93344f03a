"""The resumable shard loop of the feature stages (and of captioning new photos): compute the
shards of a kind that are missing or stale, keep the rest."""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from features.config import StoreConfig
from features.errors import ImageError, StoreError
from features.files import write_json
from features.store import check_shard, nonfinite_rows, open_shard, shard_path, shard_slices, write_shard

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Rank:
    """Which shards this process owns: shard i belongs to rank i mod count."""

    index: int = 0
    count: int = 1

    @classmethod
    def from_spec(cls, spec: str = "") -> "Rank":
        """``i/n`` (``--shard``), else torchrun's RANK/WORLD_SIZE, else 0/1."""
        try:
            index, count = ((int(x) for x in spec.split("/")) if spec else
                            (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))))
        except ValueError as err:
            raise ValueError(f"--shard {spec!r}: expected i/n, e.g. 0/4") from err
        if not 0 <= index < count:
            raise ValueError(f"--shard {index}/{count}: need 0 <= i < n")
        return cls(index, count)

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> "Rank":
        """``--shard i/n`` on the command line, else as :meth:`from_spec`."""
        parser = argparse.ArgumentParser()
        parser.add_argument("--shard", default="", help="i/n: compute only shards s with s %% n == i")
        return cls.from_spec(parser.parse_args(argv).shard)


# compute(shard_index, manifest entries, progress(n_images)) -> (arrays, {row: reason} of rejected rows)
Compute = Callable[[int, list[dict[str, Any]], Callable[[int], object]], tuple[dict[str, np.ndarray], dict[int, str]]]


def shard_inputs(kind: str, entries: list[dict[str, Any]]) -> str:
    """Digest of what a shard of ``kind`` is computed from beyond its provenance: each image's bytes
    (the md5 that ``prepare`` records) for the kinds made from images (knn and region_keywords
    through regions), each image's captions for clip_text. So a photo or caption changed under the
    same id makes its shard stale, and DVC need not hash the image folder again for every image
    stage: ``prepare`` alone depends on it."""
    key = "captions" if kind == "clip_text" else "md5"
    return hashlib.sha256(json.dumps([[e["id"], e.get(key)] for e in entries]).encode()).hexdigest()


def _is_current(path: Path, kind: str, provenance: dict[str, Any], entries: list[dict[str, Any]]) -> bool:
    """A shard that exists is complete (atomic writes); it is reused if made from the same images
    (ids and bytes; captions for clip_text) under the same provenance, and if every byte of it
    still passes its checksum and its contents check (a damaged shard is recomputed, not adopted)."""
    if not path.exists():
        return False
    try:
        shard = open_shard(path, kind, provenance, [e["id"] for e in entries], shard_inputs(kind, entries))
    except (StoreError, OSError) as err:
        log.info("recomputing %s: %s", path, err)
        return False
    try:
        problems = check_shard(shard, kind)
    finally:
        shard.close()
    if problems:
        log.warning("recomputing %s: %s", path, problems[0])
    return not problems


def reject_nonfinite(kind: str, arrays: dict[str, np.ndarray], errors: dict[int, str]) -> None:
    """An image whose computed features are not all finite is rejected with a reason (readers
    refuse its rows), never stored as if it were usable."""
    for name, rows in nonfinite_rows(kind, arrays).items():
        for row in rows.tolist():
            errors.setdefault(row, f"its {kind} {name!r} are not finite (NaN/Inf from the extractor)")


def for_each_shard(store: StoreConfig, manifest: dict[str, Any], kind: str, provenance: dict[str, Any],
                   compute: Compute, rank: Rank = Rank(), summarize: bool = True) -> None:
    """Compute and write the shards of ``kind`` that this rank owns and that are missing or stale.

    A stage killed mid-way therefore redoes only unfinished shards, and images appended to a data
    set only add shards. With ``store.on_bad_image: fail`` the first unusable image stops the stage.
    ``summarize``: gather the rejected images into ``<kind>/rejects.json`` with a warning (a
    caller that reports each file itself, as captioning does, says no).
    """
    slices = shard_slices(len(manifest["images"]), store.shard_size)
    todo = [i for i in missing_shards(store, manifest, kind, provenance) if i % rank.count == rank.index]
    log.info("%s: %d of %d shards to compute (rank %d/%d)", kind, len(todo), len(slices), rank.index, rank.count)
    with tqdm(total=sum(slices[i].stop - slices[i].start for i in todo), desc=kind, unit="img",
              smoothing=0.1, disable=not log.isEnabledFor(logging.INFO)) as bar:  # a bar is INFO too
        for index in todo:
            write_one_shard(store, manifest, kind, provenance, compute, index, bar.update)
    finish_kind(Path(store.dir), kind, len(slices), summarize)


def missing_shards(store: StoreConfig, manifest: dict[str, Any], kind: str, provenance: dict[str, Any],
                   only: list[int] | None = None) -> list[int]:
    """The shards of ``kind`` (or of ``only``) that are missing, stale or damaged: each existing one
    is read in full and checked, as graphcap-verify does."""
    images, folder = manifest["images"], Path(store.dir)
    slices = shard_slices(len(images), store.shard_size)
    return [i for i in (range(len(slices)) if only is None else only)
            if not _is_current(shard_path(folder, kind, i), kind, provenance, images[slices[i]])]


def write_one_shard(store: StoreConfig, manifest: dict[str, Any], kind: str, provenance: dict[str, Any],
                    compute: Compute, index: int, progress: Callable[[int], object] = lambda n: None) -> None:
    """Compute shard ``index`` of ``kind`` and write it atomically (a worker killed mid-way leaves
    only a ``.tmp`` file, never a shard that looks complete)."""
    entries = manifest["images"][shard_slices(len(manifest["images"]), store.shard_size)[index]]
    arrays, errors = compute(index, entries, progress)
    reject_nonfinite(kind, arrays, errors)
    if errors and store.on_bad_image == "fail":
        raise ImageError(next(iter(errors.values())) + " (store.on_bad_image: fail)")
    rejects = [{"id": entries[row]["id"], "file": entries[row]["path"], "reason": reason}
               for row, reason in sorted(errors.items())]
    write_shard(shard_path(Path(store.dir), kind, index), kind, [e["id"] for e in entries], arrays, provenance,
                first_index=index * store.shard_size, rejects=rejects, inputs=shard_inputs(kind, entries))


def finish_kind(store: Path, kind: str, n_shards: int, summarize: bool = True) -> None:
    """After the shards are written: remove what lies past the manifest's end and gather the
    rejected images."""
    _remove_stale(store, kind, n_shards)
    if summarize:
        _summarize_rejects(store, kind, n_shards)


def read_upstream(store: StoreConfig, kind: str, shard: int, record: dict[str, Any], entries: list[dict[str, Any]],
                  names: tuple[str, ...]) -> tuple[dict[str, np.ndarray], dict[int, str]]:
    """Arrays of the same shard of an upstream kind, and its rejected rows (which stay rejected)."""
    upstream = open_shard(shard_path(Path(store.dir), kind, shard), kind, record, [e["id"] for e in entries])
    try:
        arrays = {name: upstream.read(name) for name in names}
        row_of = {e["id"]: row for row, e in enumerate(entries)}
        errors = {row_of[r["id"]]: f"rejected by the {kind} stage: {r['reason']}" for r in upstream.rejects}
    finally:
        upstream.close()
    return arrays, errors


def _remove_stale(store: Path, kind: str, n_shards: int) -> None:
    """Shards past the end of a data set that shrank."""
    for path in sorted((store / kind).glob("shard-*.h5")):
        if int(path.stem.split("-")[1]) >= n_shards:
            log.info("removing %s: beyond the manifest's %d shards", path, n_shards)
            path.unlink()


def _summarize_rejects(store: Path, kind: str, n_shards: int) -> None:
    """Once every shard exists, gather the rejected images into ``<kind>/rejects.json``."""
    paths = [shard_path(store, kind, i) for i in range(n_shards)]
    if not all(p.exists() for p in paths):
        return  # other ranks still at work
    rejects = []
    for path in paths:
        shard = open_shard(path, kind, {})
        rejects += shard.rejects
        shard.close()
    write_json(store / kind / "rejects.json", rejects)
    if rejects:
        log.warning("%s: %d images rejected and left out (see %s), e.g. %s", kind, len(rejects),
                    store / kind / "rejects.json", rejects[0]["reason"])
