"""Caption new images with a trained model folder.

    python -m pipeline.caption photo.jpg more/photos/ [--model models/captioner] [--jsonl]
    graphcap-caption ...   (the same, as a console script)

The images go through the pipeline's own feature computations (pipeline/extract.py) into a
temporary store of real shards, and are read back and decoded by the same code as the evaluate
stage, so a new image gets exactly what a data-set image gets. params.yaml names the extractor
weights; the model folder records the features it was trained on, and a mismatch is refused
naming the key. Unusable files are reported (with the reason) and the others still captioned.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import transformers

from features.store import StoreError, check_provenance
from pipeline.app import start
from pipeline.extract import IMAGE_FEATURES
from pipeline.model_inputs import text_encoder
from pipeline.params import Params
from pipeline.paths import CAPTIONER, keyword_banks
from pipeline.provenance import expected, stored_kinds
from pipeline.runtime import device_of
from pipeline.shards import for_each_shard
from train.data import CachedFeatures, Images, StoreSpec
from train.decode import METHODS, caption_images
from train.model import load_captioner
from world.generate import DATASET_NAME as DEMO_WORLD

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def collect_images(inputs: list[Path]) -> list[Path]:
    """Files as given; folders searched recursively for image suffixes, in sorted order."""
    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            files += sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return files


def caption_files(paths: list[Path], model_dir: Path, params: Params, device: torch.device) -> list[dict[str, Any]]:
    """One record per path, in order: {"file", "caption", "regions" (how many were detected)} or
    {"file", "error"}."""
    model, config = load_captioner(model_dir)
    records = expected(params)
    wanted = set(stored_kinds(params)) | ({"region_clip"} if model.cfg.reads_region_clip else set())
    for kind in set(IMAGE_FEATURES) & wanted:  # the extractors configured now must be those it was trained on
        check_provenance(model_dir / "config.json", config["features"][kind], records[kind])
    entries = [{"id": f"{i:08d}", "path": str(path.resolve()), "split": "new", "captions": []}
               for i, path in enumerate(paths)]
    manifest = {"image_root": "/", "images": entries}
    with tempfile.TemporaryDirectory(prefix="graphcap-caption-") as tmp:
        banks = keyword_banks(params.store.dir)
        if banks.exists():  # retrieval of local keywords reads the object bank from the store
            keyword_banks(tmp).symlink_to(banks.resolve())
        scratch = dataclasses.replace(params, store=dataclasses.replace(params.store, dir=tmp))
        for kind, factory in IMAGE_FEATURES.items():
            if kind not in wanted:
                continue  # an optional kind neither these parameters nor the model ask for
            for_each_shard(scratch, manifest, kind, records[kind], factory(scratch, manifest, device))
        spec = StoreSpec(Path(tmp), params.store.shard_size, [e["id"] for e in entries], records,
                         params.store.max_open_shards)
        features = CachedFeatures(spec, with_tokens=model.clip_tail is not None, with_text=False,
                                  with_region_clip=model.cfg.reads_region_clip)
        errors: dict[str, str] = {}
        for reader in features.readers.values():  # the first stage to reject a file says why
            for reject in reader.rejects():
                errors.setdefault(reject["id"], reject["reason"])
        good = [i for i, e in enumerate(entries) if e["id"] not in errors]
        rerank = text_encoder(params, device) if params.evaluate.decode.rerank == "clip" else None
        captions = caption_images(model, Images(features, good), params.evaluate.decode, params.evaluate.batch_size,
                                  device, rerank) if good else []
        counts = [int(n) for n in features.readers["regions"].rows(good, "counts")]
        features.close()
    by_index = {i: {"caption": c, "regions": n} for i, c, n in zip(good, captions, counts)}
    return [{"file": str(path), **by_index[i]} if i in by_index else
            {"file": str(path), "error": errors[entries[i]["id"]]} for i, path in enumerate(paths)]


def trained_on(model_dir: Path) -> str | None:
    """The data set a model folder was trained on, as its config records it (None if it does not)."""
    config = model_dir / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{model_dir}: not a trained model folder (no config.json)")
    return json.loads(config.read_text()).get("dataset")


def quiet() -> None:
    """Only warnings and errors on stderr: the libraries' set-up logs, progress bars and
    deprecation notices say nothing to someone captioning a photo."""
    logging.getLogger().setLevel(logging.WARNING)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", type=Path, help="image files or folders")
    parser.add_argument("--model", type=Path, default=CAPTIONER, help="a trained model folder")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="the parameters naming the extractors' weights (and decoding)")
    parser.add_argument("--decode", choices=METHODS, help="override evaluate.decode.method")
    parser.add_argument("--jsonl", action="store_true", help="JSON lines (errors included) instead of text")
    parser.add_argument("--verbose", action="store_true", help="the extractors' logs and progress bars on stderr")
    args = parser.parse_args(argv)
    try:  # what the user gave (files, folder, params, model) is wrong: one line naming it, no traceback
        params = start(args.params)
        if not args.verbose:
            quiet()
        if args.decode:
            decode = dataclasses.replace(params.evaluate.decode, method=args.decode)
            params = dataclasses.replace(params, evaluate=dataclasses.replace(params.evaluate, decode=decode))
        paths = collect_images(args.inputs)
        if not paths:
            raise FileNotFoundError(f"no image files ({' '.join(sorted(IMAGE_SUFFIXES))}) in "
                                    f"{', '.join(map(str, args.inputs))}")
        if trained_on(args.model) == DEMO_WORLD:
            print(f"note: {args.model} was trained on the built-in demo world (coloured shapes): it describes every "
                  "image in that world's words; train on your own data set for real photos (see README)",
                  file=sys.stderr)
        results = caption_files(paths, args.model, params, device_of(params.store.device))
    except (OSError, ValueError, StoreError) as err:  # ParamsError is a ValueError
        print(f"graphcap-caption: {err}", file=sys.stderr)
        return 2
    for record in results:
        if args.jsonl:
            print(json.dumps(record, ensure_ascii=False))
        elif "caption" in record:
            print(f"{record['file']}\t{record['caption']}")
        else:
            print(f"{record['file']}: not captioned: {record['error']}", file=sys.stderr)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
