"""The demo world's size and seed, as data (the parameter parser imports it without PIL)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorldConfig:
    """Size and seed of a generated world. Split sizes are image counts."""

    n_train: int = 1600  # images per split
    n_val: int = 200  # validation images
    n_test: int = 200  # test images
    image_size: int = 128  # pixels (square)
    max_objects: int = 4  # 1..max_objects shapes per image
    seed: int = 0  # the encoders in assets/demo were trained on seed 1000: no overlap
