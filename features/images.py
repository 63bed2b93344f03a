"""Image loading shared by every extractor: one place that turns a file into an RGB picture, and
the DataLoader that decodes in worker processes and reports unusable files instead of dying."""
from __future__ import annotations

import logging
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image, ImageMode, ImageOps
from torch.utils.data import DataLoader, Dataset

from features.errors import ImageError

log = logging.getLogger(__name__)

# The most memory one image may take decoded: width x height x bytes a pixel (at least the 3 of
# the RGB it becomes; 16-bit, alpha and CMYK take more), after JPEG draft mode has reduced it.
# load_rgb refuses a file above it from its header, before decoding a pixel. 256 MiB is what
# Pillow's own default limit (Image.MAX_IMAGE_PIXELS, 89.5 MP, left as Pillow sets it) means for
# an RGB image; a 24 MP photo takes 72 MB. Pillow itself refuses beyond twice its limit at open.
MAX_DECODED_BYTES = 256 * 2**20

_SPECIAL = ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
            (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))


def file_problem(path: Path) -> str:
    """Why ``path`` cannot be read as an image file ("" if it is a regular file, symbolic links
    followed), from its stat alone: a FIFO, socket or device is never opened (open may block)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"broken symbolic link (to {os.readlink(path)})" if path.is_symlink() else "no such file or folder"
    except OSError as err:
        return f"cannot read ({err.strerror})"
    if stat.S_ISREG(mode):
        return ""
    return f"not a regular file ({next((name for test, name in _SPECIAL if test(mode)), 'unknown type')})"


def _open(path: Path) -> Image.Image:
    """``Image.open`` of a regular file (else ImageError naming the reason). Pillow's warning
    above its pixel limit is silenced: load_rgb's budget decides, after JPEG draft mode."""
    problem = file_problem(path)
    if problem:
        raise ImageError(f"{path}: {problem}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except Image.DecompressionBombError as err:
        raise ImageError(f"{path}: too large to decode ({type(err).__name__}: {err})") from err


def _check_budget(path: Path, image: Image.Image, max_bytes: int) -> None:
    """ImageError if decoding ``image`` at its (header, or draft-reduced) size would take more
    than ``max_bytes``."""
    width, height = image.size
    mode = ImageMode.getmode(image.mode)
    size = width * height * max(3, len(mode.bands) * int(mode.typestr[-1]))
    if size > max_bytes:
        raise ImageError(f"{path}: too large to decode ({width}x{height} pixels in mode {image.mode}: "
                         f"{size / 2**20:.0f} MiB decoded, the limit is {max_bytes / 2**20:.0f} MiB)")


def load_rgb(path: Path, max_side: int = 0, max_bytes: int = MAX_DECODED_BYTES) -> Image.Image:
    """Decode ``path`` into an upright 8-bit RGB image: EXIF rotation applied, frame 0 of
    animations, alpha composited on white, grayscale/palette/CMYK/16-bit converted. With
    ``max_side``, images larger than that are decoded at reduced size (JPEG draft mode) and
    shrunk, so huge photos never occupy full-resolution memory downstream. A file that is not a
    regular file, or would take more than ``max_bytes`` decoded, is refused before decoding."""
    try:
        with _open(path) as image:
            image.seek(0)
            if max_side and max(image.size) > max_side:
                image.draft("RGB", (max_side, max_side))  # JPEG: decode at 1/2, 1/4, 1/8 scale
            _check_budget(path, image, max_bytes)
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
    with _open(path) as image:
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
