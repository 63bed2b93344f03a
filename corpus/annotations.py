"""The caption files users have, read into Karpathy's split-JSON form (``datasets.read_dataset``
then checks and normalises every entry the same way whatever the source):

- Karpathy's split JSON (``dataset_coco.json``, ``dataset_flickr30k.json``, ...): as it is;
- COCO's caption annotations (``captions_train2014.json``, ``captions_val2014.json``): one file,
  or a folder whose ``captions_*.json`` files are read together; an image's folder under the
  image root is the file's split name (``train2014``), so ``data.split.rule: coco2014`` gives the
  paper's split;
- the Flickr30k / Flickr8k token file (``results_20130124.token``, ``Flickr8k.token.txt``): lines
  ``<image file>#<n>\\t<caption>``, images directly under the image root.

The format is told by content, not by name. COCO's and Flickr's files hold no split, so they need
``data.split.rule`` coco2014 or random.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

COCO_FILES = "captions_*.json"  # in a folder given as data.dataset
_TOKEN_LINE = re.compile(r"^(?P<file>[^\t#]+)#\d+\t(?P<caption>.*)$")
FORMATS = "Karpathy's split JSON, COCO caption annotations (captions_*.json or their folder), a Flickr token file"


class DatasetError(ValueError):
    """A data-set file or entry that cannot be used; the message names it."""


def load_karpathy_form(source: Path) -> tuple[dict[str, Any], bool]:
    """``source`` as a Karpathy split JSON dict, and whether it carries its own splits."""
    source = Path(source)
    if source.is_dir():
        files = sorted(source.glob(COCO_FILES))
        if not files:
            raise DatasetError(f"{source}: a folder, but without COCO caption files ({COCO_FILES})")
        return _merge([_coco(f, _read_json(f)) for f in files], "coco"), False
    text = _read_text(source)
    if text.lstrip().startswith("{"):
        data = _read_json(source, text)
        if isinstance(data.get("annotations"), list):
            return _coco(source, data), False
        if isinstance(data.get("images"), list):
            return data, True
    elif _TOKEN_LINE.match(text.split("\n", 1)[0].strip("\r")):
        return _flickr(source, text), False
    raise DatasetError(f"{source}: not a caption file of a known format ({FORMATS})")


def _read_text(source: Path) -> str:
    try:
        return source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{source}: cannot read it ({type(err).__name__}: {err})") from err


def _read_json(source: Path, text: str | None = None) -> dict[str, Any]:
    try:
        data = json.loads(_read_text(source) if text is None else text)
    except (ValueError, RecursionError) as err:
        raise DatasetError(f"{source}: not valid JSON ({type(err).__name__}: {err})") from err
    if not isinstance(data, dict):
        raise DatasetError(f"{source}: expected a JSON object, found a {type(data).__name__}")
    return data


def _coco(source: Path, data: dict[str, Any]) -> dict[str, Any]:
    """COCO caption annotations → Karpathy entries, each image under its file's split folder."""
    folder = source.stem.removeprefix("captions_") if source.stem.startswith("captions_") else ""
    captions: dict[Any, list[dict[str, str]]] = {}
    for k, note in enumerate(data["annotations"]):
        if not isinstance(note, dict) or "image_id" not in note or not isinstance(note.get("caption"), str):
            raise DatasetError(f"{source}: annotation #{k} lacks 'image_id' or a 'caption' text")
        captions.setdefault(note["image_id"], []).append({"raw": note["caption"]})
    images = []
    for k, image in enumerate(data.get("images") or []):
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise DatasetError(f"{source}: image #{k} lacks 'id' or 'file_name'")
        if image["id"] in captions:  # an image without a caption has nothing to train or score
            images.append({"cocoid": image["id"], "filepath": folder, "filename": image["file_name"],
                           "sentences": captions[image["id"]]})
    if not images:
        raise DatasetError(f"{source}: no image of its 'images' list has a caption")
    return {"dataset": "coco", "images": images}


def _flickr(source: Path, text: str) -> dict[str, Any]:
    """A Flickr token file → Karpathy entries, ids from the file names (``1000092795.jpg`` → 1000092795)."""
    captions: dict[str, list[dict[str, str]]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _TOKEN_LINE.match(line.rstrip("\r"))
        if not match:
            raise DatasetError(f"{source}: line {number} is not '<image file>#<n><tab><caption>'")
        captions.setdefault(match["file"], []).append({"raw": match["caption"]})
    name = "flickr30k" if "8k" not in source.name.lower() else "flickr8k"
    return {"dataset": name, "images": [{"imgid": Path(file).stem, "filename": file, "sentences": sentences}
                                        for file, sentences in captions.items()]}


def _merge(parts: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return {"dataset": name, "images": [image for part in parts for image in part["images"]]}
