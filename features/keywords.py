"""Keyword banks for the multi-scale semantic guidance (METHOD.md §5).

- The global (scene) bank E_global: dataset-wide keywords, mined from the training captions by
  frequency (stop words and the object class names left out), or read from a file the user gives
  (one keyword or phrase per line).
- The object bank: the detector's class names (index = label id); an image's local keywords
  are the labels of its regions.
Both banks are CLIP-text-encoded once by the clip_text stage and stored in ``keywords.h5``.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

STOP_WORDS = frozenset("""
a an the and or of to in on at by with for from is are was were be been being it its this that these
there their they them he she his her we you i as into onto over under near next up down out off
itself by alone one two three four five <num> some while other another very
""".split())


@dataclass(frozen=True)
class KeywordConfig:
    """Every key is documented in params.yaml (section ``keywords``)."""

    scene_bank: str = "mined"  # "mined", or a text file with one keyword per line
    scene_bank_size: int = 64
    min_count: int = 5
    prompt: str = "{}"  # how a keyword is phrased for CLIP's text encoder, e.g. "a photo of {}"


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
        path = Path(cfg.scene_bank)
        if not path.is_file():
            raise FileNotFoundError(f"keywords.scene_bank: {path} not found (or use 'mined')")
        words = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not words:
        raise ValueError("keywords.scene_bank: the scene keyword bank is empty")
    return words


def object_keywords(class_names: list[str]) -> list[str]:
    """Label id → keyword; the background class keeps its slot so that label ids index the bank."""
    return [name.replace("_", " ") for name in class_names]
