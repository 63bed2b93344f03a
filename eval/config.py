"""The report's configuration, as data (the parameter parser imports it without the model)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReportConfig:
    """Section ``report`` of the parameters; each field's comment documents its key."""

    n_images: int = 12  # the first N images of evaluate.split
    image_px: int = 384  # side of each drawing
    top_keywords: int = 5  # global and local keywords listed per image
