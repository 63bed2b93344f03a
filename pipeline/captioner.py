"""Pixels to captions in three lines, with a released model folder or its Hub id (re-exported as
``graphcap.Captioner``)::

    from graphcap import Captioner
    captioner = Captioner.from_pretrained("models/release")  # or "user/name" on the Hub
    captioner.caption(["photo.jpg", pil_image])               # one caption per image

The images go through :class:`pipeline.caption.NewImages`, the code `graphcap-caption` and the
pipeline's stages run, so an image gets the caption the command gives it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageFile

from features.images import ImageError
from pipeline.app import project_of, start
from pipeline.caption import NewImages, own_params
from pipeline.runtime import device_of
from train.model import model_folder

PNG_MODES = ("1", "L", "LA", "I", "P", "RGB", "RGBA")  # what PNG stores as it is; other modes become RGB


class Captioner:
    """A model with its extractors, loaded once; :meth:`caption` captions files or PIL images."""

    def __init__(self, images: NewImages):
        self.images = images

    @classmethod
    def from_pretrained(cls, name_or_folder: str | Path, params: str | Path | None = None, device: str = "auto",
                        precision: str | None = None, revision: str | None = None) -> "Captioner":
        """A model folder or Hub id; its own params.yaml (a release's) names the extractors and the
        decoding unless ``params`` names another file. ``precision`` runs the extractors and the
        decoding at another ``store.precision`` than the model's features were made at."""
        folder = model_folder(name_or_folder, revision).resolve()
        params_file = Path(params).resolve() if params else own_params(folder)
        if params_file is None:
            raise FileNotFoundError(f"{folder}: no params.yaml (not a release folder): give params=")
        with contextlib.chdir(project_of(params_file)):  # its relative paths: its folder's
            loaded = start(params_file)
            if precision:
                loaded = dataclasses.replace(loaded, store=dataclasses.replace(loaded.store, precision=precision))
            where = device_of(loaded.store.device) if device == "auto" else torch.device(device)
            return cls(NewImages(folder, loaded, where, any_precision=bool(precision)))

    def caption(self, images: Sequence[str | Path | Image.Image]) -> list[str]:
        """One caption per image (a file path or a PIL image), in order. An unusable image stops
        the call with :class:`ImageError` naming every such image and why."""
        with tempfile.TemporaryDirectory(prefix="graphcap-images-", dir=self.images.store) as tmp:
            paths = [_as_file(image, Path(tmp) / f"image-{k}.png") for k, image in enumerate(images)]
            records = self.images.caption(paths)
        failed = [f"{_name(image)}: {r['error']}" for image, r in zip(images, records) if "error" in r]
        if failed:
            raise ImageError("not captioned: " + "; ".join(failed))
        return [r["caption"] for r in records]

    def __enter__(self) -> "Captioner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.images.__exit__(*exc)


def _as_file(image: str | Path | Image.Image, scratch: Path) -> Path:
    """The file the extractors read: a path as it is; a PIL image as opened from a file, that
    file (read as the command reads it, e.g. a large JPEG decoded at reduced size); any other PIL
    image written losslessly (PNG), pixels unchanged."""
    opened = getattr(image, "filename", "")
    if isinstance(image, ImageFile.ImageFile) and opened and Path(opened).is_file():
        return Path(opened).resolve()
    if isinstance(image, Image.Image):
        (image if image.mode in PNG_MODES else image.convert("RGB")).save(scratch)
        return scratch
    return Path(image).resolve()


def _name(image: str | Path | Image.Image) -> str:
    return f"PIL image {image.size[0]}x{image.size[1]}" if isinstance(image, Image.Image) else str(image)
