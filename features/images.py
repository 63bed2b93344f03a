"""Image loading shared by every extractor: one place that turns a file into an RGB picture, and
the DataLoader that decodes in worker processes and reports unusable files instead of dying."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset

from features.errors import ImageError

log = logging.getLogger(__name__)

# Beyond this PIL raises DecompressionBombError instead of decoding (a 24 MP photo is fine).
Image.MAX_IMAGE_PIXELS = 100_000_000


def load_rgb(path: Path, max_side: int = 0) -> Image.Image:
    """Decode ``path`` into an upright 8-bit RGB image: EXIF rotation applied, frame 0 of
    animations, alpha composited on white, grayscale/palette/CMYK/16-bit converted. With
    ``max_side``, images larger than that are decoded at reduced size (JPEG draft mode) and
    shrunk, so huge photos never occupy full-resolution memory downstream."""
    try:
        with Image.open(path) as image:
            image.seek(0)
            if max_side and max(image.size) > max_side:
                image.draft("RGB", (max_side, max_side))  # JPEG: decode at 1/2, 1/4, 1/8 scale
            image = ImageOps.exif_transpose(image)
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            elif image.mode.startswith("I"):
                image = image.point(lambda v: v / 256).convert("L")  # 16-bit: keep the high byte
            image = image.convert("RGB")
            if min(image.size) < 2:
                raise ImageError(f"{path}: image too small ({image.size[0]}x{image.size[1]})")
            if max_side and max(image.size) > max_side:
                image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
            return image
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        if isinstance(err, ImageError):
            raise
        raise ImageError(f"{path}: cannot read image ({type(err).__name__}: {err})") from err


def original_size(path: Path) -> tuple[int, int]:
    """(height, width) of the upright image as stored, without decoding its pixels."""
    with Image.open(path) as image:
        width, height = image.size
        orientation = image.getexif().get(0x0112, 1)
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


@dataclass
class Decoded:
    index: int
    image: torch.Tensor | None  # None when the file was rejected
    size: tuple[int, int]  # (height, width) of the upright original; (0, 0) when rejected
    error: str = ""


class ImageFiles(Dataset):
    """Decodes and transforms images in DataLoader workers; a bad file becomes a rejection
    record rather than an exception, so one file cannot stop a night's extraction."""

    def __init__(self, paths: Sequence[Path], transform: Callable[[Image.Image], torch.Tensor], max_side: int = 0):
        self.paths, self.transform, self.max_side = list(paths), transform, max_side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Decoded:
        try:
            image = load_rgb(self.paths[i], self.max_side)
            return Decoded(i, self.transform(image), original_size(self.paths[i]))
        except ImageError as err:
            return Decoded(i, None, (0, 0), str(err))


def _as_list(items: list[Decoded]) -> list[Decoded]:
    return items


def image_batches(paths: Sequence[Path], transform: Callable[[Image.Image], torch.Tensor], batch_size: int,
                  num_workers: int, max_side: int = 0) -> DataLoader:
    """Batches (lists) of :class:`Decoded` in the order of ``paths``; decoding overlaps the model
    forward when ``num_workers`` > 0."""
    return DataLoader(ImageFiles(paths, transform, max_side), batch_size=batch_size, num_workers=num_workers,
                      collate_fn=_as_list, prefetch_factor=4 if num_workers else None)
