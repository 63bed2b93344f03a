"""Data sets → manifest: Karpathy split JSON (COCO, Flickr30k, Flickr8k, the demo world), COCO's
caption annotations and Flickr's token files (read by :mod:`corpus.annotations`).

The manifest is the single list every later stage indexes: one entry per image with a stable
string id, its path relative to the image root, the md5 of the image file's bytes, its split and
its normalised captions. Feature shards are slices of it, in its order; the md5 is how a feature
stage knows that a photo changed under the same id (only ``prepare`` reads the image folder's
identity, so DVC hashes that folder once, not once per image stage).
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

from tqdm import tqdm

from corpus.annotations import DatasetError, load_karpathy_form

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
NUMBER_TOKEN = "<num>"  # what prepare.numbers_to_token writes for a number; never in a scored caption


@dataclass(frozen=True)
class TextConfig:
    """Caption normalisation (docs/method.md §9); section ``prepare``."""

    lowercase: bool = True  # captions lowercased
    strip_punctuation: bool = True  # all but letters, digits, spaces, periods and < > (of <num>)
    numbers_to_token: bool = True  # numbers become <num>
    restval_to_train: bool = True  # Karpathy "restval" images join the training split


@dataclass(frozen=True)
class SplitConfig:
    """Which images train, validate and test; section ``data.split``."""

    rule: Literal["karpathy", "coco2014", "random"] = "karpathy"  # karpathy (Karpathy JSON's splits, restval → train) |
    #   coco2014 (train2014 trains, val2014 tests: the paper's MSCOCO split) | random (Flickr30k's 8:2 in the paper)
    train_share: float = 0.8  # random: share of the images that train; the rest test
    seed: int = 0  # random: the draw; coco2014 / random: which training images validate
    val_images: int = 5000  # coco2014 / random: training images held out to choose the best epoch


_PUNCTUATION = re.compile(r"[^\w\s.<>]|_")
_NUMBER = re.compile(r"\b\d+(?:[.,]\d+)?\b")


def normalize_caption(text: str, cfg: TextConfig) -> str:
    if cfg.lowercase:
        text = text.lower()
    if cfg.numbers_to_token:
        text = _NUMBER.sub(NUMBER_TOKEN, text)
    if cfg.strip_punctuation:
        text = _PUNCTUATION.sub(" ", text)
    text = re.sub(r"\s+([.])", r"\1", text)  # "word ." -> "word."
    return " ".join(text.split()).rstrip(". ").strip()


def scorable(caption: str) -> str:
    """A decoded caption as it is scored (evaluation and validation): without the number token (a
    number the model could not name; the raw references have none)."""
    return " ".join(word for word in caption.split() if word != NUMBER_TOKEN)


def _entry_id(entry: dict[str, Any], position: int, source: Path) -> str:
    for key in ("cocoid", "imgid"):
        if key in entry:
            return str(entry[key])
    raise DatasetError(f"{source}: image entry #{position} has neither 'cocoid' nor 'imgid'")


def _split_of(entry: dict[str, Any], image_id: str, source: Path, cfg: TextConfig, has_splits: bool) -> str | None:
    """The entry's split, or None where its file holds none (``data.split.rule`` assigns them)."""
    if not has_splits:
        return None
    split = entry.get("split")
    if split == "restval" and cfg.restval_to_train:
        return "train"
    if split not in SPLITS:
        raise DatasetError(f"{source}: image {image_id}: unknown split {split!r} (expected one of {SPLITS})")
    return split


def _relative_path(entry: dict[str, Any], image_id: str, source: Path) -> Path:
    """The entry's image path, which must stay inside the image root."""
    path = Path(str(entry.get("filepath", ""))) / str(entry["filename"])
    if "\0" in str(path):
        raise DatasetError(f"{source}: image {image_id}: path {str(path)!r} holds a NUL character")
    if path.is_absolute() or ".." in path.parts:
        raise DatasetError(f"{source}: image {image_id}: path {str(path)!r} leaves the image root")
    return path


def _usable_captions(raw: list[str], image_id: str, source: Path, max_chars: int) -> list[str]:
    """Captions past ``max_chars`` (a broken export, not a description) are left out, named."""
    kept = [r for r in raw if len(r) <= max_chars]
    if len(kept) < len(raw):
        log.warning("%s: image %s: %d caption(s) longer than %d characters left out", source, image_id,
                    len(raw) - len(kept), max_chars)
    if not kept:
        raise DatasetError(f"{source}: image {image_id}: every caption is longer than {max_chars} characters")
    return kept


def read_dataset(source: Path, cfg: TextConfig, max_caption_chars: int = 1000) -> dict[str, Any]:
    """Read a caption file (Karpathy, COCO or Flickr: :mod:`corpus.annotations`) into a
    manifest dict (without the image root); entries of a file without splits have split None."""
    data, has_splits = load_karpathy_form(Path(source))
    images, seen = [], set()
    for position, entry in enumerate(data["images"]):
        if not isinstance(entry, dict):
            raise DatasetError(f"{source}: image entry #{position} is a JSON {type(entry).__name__}, not an object")
        image_id = _entry_id(entry, position, source)
        if image_id in seen:
            raise DatasetError(f"{source}: duplicate image id {image_id}")
        seen.add(image_id)
        if "filename" not in entry or not entry.get("sentences"):
            raise DatasetError(f"{source}: image {image_id}: missing 'filename' or 'sentences'")
        if not isinstance(entry["sentences"], list) or not all(isinstance(s, dict) for s in entry["sentences"]):
            raise DatasetError(f"{source}: image {image_id}: 'sentences' is not a list of objects")
        raw = _usable_captions([str(s.get("raw", "")) for s in entry["sentences"]], image_id, source,
                               max_caption_chars)
        captions = [normalize_caption(r, cfg) for r in raw]
        if not all(captions):
            raise DatasetError(f"{source}: image {image_id}: a caption is empty after normalisation")
        extra = {k: entry[k] for k in ("scene", "objects") if k in entry}
        images.append({
            "id": image_id, "path": str(_relative_path(entry, image_id, source)),
            "split": _split_of(entry, image_id, source, cfg, has_splits), "captions": captions, "raw": raw, "extra": extra,
        })
    return {"dataset": data.get("dataset", Path(source).stem), "images": images}


def _present_images(images: list[dict[str, Any]], image_root: Path, source: Path) -> list[dict[str, Any]]:
    """Entries whose file exists, each with its file's md5; a missing file is left out (named), a
    symlink that leads out of the image root is refused."""
    root, kept, missing = Path(image_root).resolve(), [], []
    for entry in tqdm(images, desc="prepare: image files", unit="img", disable=len(images) < 1000):
        path = (root / entry["path"]).resolve()
        if not path.is_relative_to(root):
            raise DatasetError(f"{source}: image {entry['id']}: {entry['path']} leads out of the image root "
                               f"{image_root} (a symlink?)")
        if path.is_file():
            kept.append({**entry, "md5": file_md5(path)})
        else:
            missing.append(entry)
    if missing and not kept:  # a wrong data.image_root, most likely: stop here, not stages later
        raise DatasetError(f"{source}: none of its {len(missing)} image files is under data.image_root {image_root} "
                           f"(the first: {image_root / missing[0]['path']})")
    if missing:
        log.warning("%s: %d image file(s) missing under %s, left out: %s", source, len(missing), image_root,
                    ", ".join(f"{e['id']} ({e['path']})" for e in missing[:5]) + (" …" if len(missing) > 5 else ""))
    return kept


def file_md5(path: Path) -> str:
    """The md5 of a file's bytes (as DVC hashes files: ~1 min for COCO's 19 GB)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def build_manifest(source: Path, image_root: Path, cfg: TextConfig, max_images: int = 0,
                   max_caption_chars: int = 1000, split: SplitConfig = SplitConfig()) -> dict[str, Any]:
    manifest = read_dataset(source, cfg, max_caption_chars)
    if max_images:
        manifest["images"] = manifest["images"][:max_images]
    manifest["images"] = _present_images(manifest["images"], image_root, source)
    assign_splits(manifest["images"], split, source)
    manifest["image_root"] = str(image_root)
    manifest["split"] = asdict(split)
    counts = {s: sum(e["split"] == s for e in manifest["images"]) for s in SPLITS}
    log.info("manifest: %d images %s", len(manifest["images"]), counts)
    return manifest


def assign_splits(images: list[dict[str, Any]], cfg: SplitConfig, source: Path) -> None:
    """Each entry's split by ``cfg.rule``: karpathy keeps the JSON's (restval joining train);
    coco2014 is the paper's MSCOCO split, train2014 trains and val2014 tests (by the folder an
    image is in); random draws ``train_share`` of the images to train, the rest to test. Both of
    those then hold ``val_images`` of the training images out for validation."""
    if cfg.rule == "karpathy":
        if images and images[0]["split"] is None:
            raise DatasetError(f"{source}: its captions come without splits (COCO annotations, a Flickr token file): "
                               "set data.split.rule to coco2014 (COCO: train2014 trains, val2014 tests) or random")
        return
    if cfg.rule == "coco2014":
        for entry in images:
            folder = Path(entry["path"]).parts[0]
            if folder not in ("train2014", "val2014"):
                raise DatasetError(f"{source}: image {entry['id']}: data.split.rule coco2014 needs it under "
                                   f"train2014/ or val2014/, not {entry['path']}")
            entry["split"] = "train" if folder == "train2014" else "test"
    else:
        order = random.Random(cfg.seed).sample(range(len(images)), len(images))
        n_train = round(cfg.train_share * len(images))
        for rank, k in enumerate(order):
            images[k]["split"] = "train" if rank < n_train else "test"
    training = [e for e in images if e["split"] == "train"]
    for entry in random.Random(cfg.seed).sample(training, min(cfg.val_images, max(len(training) - 1, 0))):
        entry["split"] = "val"


_IMAGES_OPEN = '"images": ['  # the end of a streamable manifest's first line


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """The manifest as JSON with one image entry per line, written atomically, so that a reader
    can stream it (:func:`read_manifest`): at COCO size the whole file parsed at once is ~600 MB
    of Python objects, and most stages need a few fields of each entry."""
    header = json.dumps({k: v for k, v in manifest.items() if k != "images"})
    images = manifest["images"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(header[:-1] + (", " if header != "{}" else "") + _IMAGES_OPEN + "\n")
        for k, entry in enumerate(images):
            f.write(json.dumps(entry) + (",\n" if k + 1 < len(images) else "\n"))
        f.write("]}\n")
    tmp.replace(path)


def read_manifest(path: Path, keep: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, Any]:
    """A manifest, each image entry passed through ``keep`` as it is read (a reader that needs a
    few fields keeps only those)."""
    with open(path) as f:
        first = f.readline().rstrip()
    if first.endswith(_IMAGES_OPEN):
        manifest = json.loads(first + "]}")
    else:  # not in write_manifest's layout (written by hand): small enough to parse twice
        manifest = {k: v for k, v in json.loads(Path(path).read_text()).items() if k != "images"}
    manifest["images"] = [keep(e) if keep else e for e in manifest_images(path)]
    return manifest


def manifest_images(path: Path) -> Iterator[dict[str, Any]]:
    """The image entries of a manifest, one at a time (streamed in write_manifest's layout)."""
    with open(path) as f:
        first = f.readline()
        if not first.rstrip().endswith(_IMAGES_OPEN):
            yield from json.loads(first + f.read())["images"]
            return
        for line in f:
            line = line.strip().rstrip(",")
            if line and line != "]}":
                yield json.loads(line)


def image_paths(manifest: dict[str, Any], entries: list[dict[str, Any]] | None = None) -> list[Path]:
    root = Path(manifest["image_root"])
    return [root / e["path"] for e in (manifest["images"] if entries is None else entries)]
