"""The demo world's size and seed, as data (the parameter parser imports it without PIL)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorldConfig:
    """Size and seed of a generated world. Split sizes are image counts."""

    n_train: int = 1600
    n_val: int = 200
    n_test: int = 200
    image_size: int = 128
    max_objects: int = 4
    seed: int = 0
