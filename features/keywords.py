"""Keyword banks for the multi-scale semantic guidance (docs/method.md §5).

- The global (scene) bank E_global: dataset-wide keywords, mined from the training captions by
  frequency (stop words and the object class names left out), or read from a file the user gives
  (one keyword or phrase per line).
- The object bank: the detector's class names (index = label id), or a file of object and
  attribute keywords ("red circle", "wooden table", ...).
Both banks are CLIP-text-encoded once by the clip_text stage and stored in ``keywords.h5``.

Each region's local keywords (the region_keywords stage) come either from the detector's label
(``local_source: labels``) or from retrieval: the object-bank entries nearest, by cosine, to the
CLIP image embedding of the region's crop, found with a FAISS inner-product index over the
normalised bank (``local_source: retrieval``). Keyword id -1 means "none" (background, padding).
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Iterable

import numpy as np

from features.config import KeywordConfig

STOP_WORDS = frozenset("""
a an the and or of to in on at by with for from is are was were be been being it its this that these
there their they them he she his her we you i as into onto over under near next up down out off
itself by alone one two three four five num some while other another very
""".split())


def object_bank_words(cfg: KeywordConfig, class_names: list[str]) -> list[str]:
    if cfg.object_bank == "classes":
        return object_keywords(class_names)
    if cfg.local_source == "labels":
        raise ValueError("keywords.local_source 'labels' needs keywords.object_bank 'classes' (label ids index it)")
    return _read_lines(Path(cfg.object_bank), "keywords.object_bank")


def _read_lines(path: Path, key: str) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{key}: {path} not found")
    words = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not words:
        raise ValueError(f"{key}: {path} holds no keyword")
    return words


def retrieve_keywords(queries: np.ndarray, bank: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` bank entries by cosine for each query: (m, d), (C, d) → ids (m, k), scores (m, k).
    An exact FAISS inner-product index over the normalised bank (on a GPU when FAISS has one)."""
    import faiss

    def unit(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    index = faiss.IndexFlatIP(bank.shape[1])
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(unit(bank))
    scores, ids = index.search(unit(queries), k)
    return ids.astype(np.int32), scores.astype(np.float32)


def mine_scene_keywords(captions: Iterable[str], exclude: Iterable[str], size: int, min_count: int) -> list[str]:
    """The ``size`` most frequent content words (ties broken alphabetically, so it is stable)."""
    excluded = STOP_WORDS | {w.lower() for w in exclude}
    counts = Counter(w for c in captions for w in re.findall(r"[a-z]+", c.lower()) if w not in excluded)
    ranked = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    return ranked[:size]


def scene_keywords(cfg: KeywordConfig, train_captions: Iterable[str], class_names: Iterable[str]) -> list[str]:
    if cfg.scene_bank == "mined":
        words = mine_scene_keywords(train_captions, class_names, cfg.scene_bank_size, cfg.min_count)
    else:
        words = _read_lines(Path(cfg.scene_bank), "keywords.scene_bank")
    if not words:
        raise ValueError("keywords.scene_bank: the scene keyword bank is empty")
    return words


def object_keywords(class_names: list[str]) -> list[str]:
    """Label id → keyword; the background class keeps its slot so that label ids index the bank
    (its id is never used: background regions get keyword id -1)."""
    return [name.replace("_", " ") for name in class_names]


def label_keywords(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``local_source: labels``: each region's keyword is its class; (n, N) → (n, N, 1)."""
    ids = np.where(labels > 0, labels, -1).astype(np.int32)
    return ids[..., None], np.where(labels > 0, scores, 0).astype(np.float32)[..., None]


def selectable_keywords(cfg: KeywordConfig, scene: tuple[list[str], np.ndarray],
                        objects: tuple[list[str], np.ndarray]) -> tuple[list[str], np.ndarray]:
    """Both banks (words, embeddings) as one list an image picks its keywords from (keyword-only
    generation). A ``classes`` object bank's slot 0 is the detector's background, not a keyword."""
    first = 1 if cfg.object_bank == "classes" else 0
    return scene[0] + objects[0][first:], np.concatenate([scene[1], objects[1][first:]])
