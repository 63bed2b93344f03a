"""Image loading shared by every extractor: one place that turns a file into an RGB picture."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)

# Refuse decompression bombs explicitly rather than letting PIL warn and carry on.
Image.MAX_IMAGE_PIXELS = 64_000_000


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file and the reason."""


def load_rgb(path: Path) -> Image.Image:
    """Decode ``path`` into an upright 8-bit RGB image (EXIF rotation applied, frame 0 of
    animations, alpha composited on white, grayscale/palette/CMYK/16-bit converted)."""
    try:
        with Image.open(path) as image:
            image.seek(0)
            image = ImageOps.exif_transpose(image)
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image = Image.alpha_composite(background, rgba)
            elif image.mode in ("I;16", "I;16B", "I;16L", "I"):
                image = image.point(lambda v: v / 256).convert("L")  # 16-bit: keep the high byte
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ImageError(f"{path}: cannot read image ({err})") from err


class ImageFiles(Dataset):
    """Decodes and transforms images in DataLoader workers; yields (index, tensor)."""

    def __init__(self, paths: Sequence[Path], transform: Callable[[Image.Image], torch.Tensor]):
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        return i, self.transform(load_rgb(self.paths[i]))


def _as_lists(items: list[tuple[int, torch.Tensor]]) -> tuple[list[int], list[torch.Tensor]]:
    return [i for i, _ in items], [x for _, x in items]


def image_batches(paths: Sequence[Path], transform: Callable[[Image.Image], torch.Tensor], batch_size: int,
                  num_workers: int, stack: bool = True) -> DataLoader:
    """Batches of (indices, images); ``stack=False`` keeps a list for detectors, whose inputs
    may differ in size."""
    collate = None if stack else _as_lists
    return DataLoader(ImageFiles(paths, transform), batch_size=batch_size, num_workers=num_workers,
                      collate_fn=collate, persistent_workers=False)
