"""The report's configuration, as data (the parameter parser imports it without the model)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReportConfig:
    """Every key is documented in params.yaml (section ``report``)."""

    n_images: int = 12  # test images shown (the first of the split, in manifest order)
    image_px: int = 384  # each drawing's side
    top_keywords: int = 5
