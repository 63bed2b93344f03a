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
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import torch
import transformers

from features.images import file_problem
from features.precision import PRECISIONS, autocast
from features.shards import for_each_shard
from features.store import check_provenance
from pipeline.app import project_of, remove_on_stop, run_command, start, stopping_on_signals
from pipeline.extract import IMAGE_FEATURES
from pipeline.model_inputs import text_encoder
from pipeline.params import Params
from pipeline.paths import CAPTIONER, keyword_banks
from pipeline.provenance import expected, stored_kinds
from pipeline.runtime import device_of
from train.data import CachedFeatures, Images, StoreSpec
from train.decode import METHODS, caption_images
from train.model import load_captioner, model_folder, read_config
from world.generate import DATASET_NAME as DEMO_WORLD

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def collect_images(inputs: list[Path]) -> tuple[list[Path], dict[Path, str]]:
    """The image files to caption, and the inputs refused (path → why): files as given, folders
    searched recursively, in sorted order, for files with an image suffix (other files in a folder
    are left out: a filter, not an error). A missing path, a broken symbolic link, a FIFO, socket
    or device is refused from its stat alone, never opened (opening a FIFO blocks)."""
    files: list[Path] = []
    refused: dict[Path, str] = {}
    for path in inputs:
        for file in _folder_images(path) if os.path.isdir(path) else [path]:  # False, not an error, on EACCES
            problem = file_problem(file)
            if problem:
                refused[file] = problem
            else:
                files.append(file)
    return files, refused


def _folder_images(folder: Path) -> list[Path]:
    """Everything under ``folder`` named like an image but not a folder (FIFOs and broken links
    included, so that they are refused by name rather than passed over), sorted."""
    return sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and not os.path.isdir(f))


class NewImages:
    """A model folder with what it reads loaded once (the model, the extractors, the re-ranker),
    captioning files through a scratch store of real shards: `caption` makes one and calls it
    once, the demo server keeps one for every upload. One call at a time: the store is shared."""

    def __init__(self, model_dir: Path, params: Params, device: torch.device | str, any_precision: bool = False):
        """``any_precision``: the extractors may run at another ``store.precision`` than the
        model's features were made at (``caption --precision``); every other setting must match."""
        self.model, self.config = load_captioner(model_dir)
        self.model.to(device)
        self.params, self.device, self.records = params, device, expected(params)
        wanted = set(stored_kinds(params)) | ({"region_clip"} if self.model.cfg.reads_region_clip else set())
        for kind in set(IMAGE_FEATURES) & wanted:  # the extractors configured now must be those it was trained on
            trained = self.config["features"][kind]
            record = {**self.records[kind], "store.precision": trained.get("store.precision")} if any_precision \
                else self.records[kind]
            check_provenance(model_dir / "config.json", trained, record)
        self._tmp = tempfile.TemporaryDirectory(prefix="graphcap-caption-")
        self.store = Path(self._tmp.name)
        remove_on_stop(self.store)
        banks = keyword_banks(params.store.dir)
        if banks.exists():  # retrieval of local keywords reads the object bank from the store
            keyword_banks(self.store).symlink_to(banks.resolve())
        self.scratch = dataclasses.replace(params, store=dataclasses.replace(params.store, dir=str(self.store)))
        root = {"image_root": "/", "images": []}  # the extractors read only the root: entries hold absolute paths
        self.computes = {kind: factory(self.scratch, root, device) for kind, factory in IMAGE_FEATURES.items()
                         if kind in wanted}  # an optional kind neither these parameters nor the model ask for: not run
        self.rerank = text_encoder(params, device) if params.evaluate.decode.rerank == "clip" else None
        self._lock = threading.Lock()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._tmp.cleanup()

    @contextlib.contextmanager
    def features(self, paths: list[Path]) -> Iterator[tuple[CachedFeatures, list[int], dict[int, str]]]:
        """The files' features, by position: (the features, positions of the usable files,
        position → why the others were rejected: the first stage to reject a file says why)."""
        with self._lock:
            for kind in self.computes:  # every call starts from an empty store: ids repeat across calls
                shutil.rmtree(self.store / kind, ignore_errors=True)
            entries = [{"id": f"{i:08d}", "path": str(path.resolve()), "split": "new", "captions": []}
                       for i, path in enumerate(paths)]
            manifest = {"image_root": "/", "images": entries}
            for kind, compute in self.computes.items():
                for_each_shard(self.scratch.store, manifest, kind, self.records[kind], compute, summarize=False)
            spec = StoreSpec(self.store, self.params.store.shard_size, [e["id"] for e in entries], self.records,
                             self.params.store.max_open_shards)
            features = CachedFeatures(spec, with_tokens=self.model.clip_tail is not None, with_text=False,
                                      with_region_clip=self.model.cfg.reads_region_clip)
            try:
                index = {e["id"]: i for i, e in enumerate(entries)}
                errors: dict[int, str] = {}
                for reader in features.readers.values():
                    for reject in reader.rejects():
                        errors.setdefault(index[reject["id"]], reject["reason"])
                yield features, [i for i in range(len(entries)) if i not in errors], errors
            finally:
                features.close()

    def caption(self, paths: list[Path]) -> list[dict[str, Any]]:
        """One record per path, in order: {"file", "caption", "regions" (how many were detected)}
        or {"file", "error"}."""
        cfg = self.params.evaluate
        with self.features(paths) as (features, good, errors), autocast(self.params.store.precision, self.device):
            captions = caption_images(self.model, Images(features, good), cfg.decode, cfg.batch_size, self.device,
                                      self.rerank) if good else []
            counts = [int(n) for n in features.readers["regions"].rows(good, "counts")]
        by_index = {i: {"caption": c, "regions": n} for i, c, n in zip(good, captions, counts)}
        return [{"file": str(path), **by_index[i]} if i in by_index else {"file": str(path), "error": errors[i]}
                for i, path in enumerate(paths)]


def caption_files(paths: list[Path], model_dir: Path, params: Params, device: torch.device,
                  any_precision: bool = False) -> list[dict[str, Any]]:
    """:meth:`NewImages.caption` of a model folder loaded for this call alone."""
    with NewImages(model_dir, params, device, any_precision) as images:
        return images.caption(paths)


def own_params(model_dir: Path | None) -> Path | None:
    """A self-contained model folder's (a release's) own parameters, if it has them."""
    return model_dir / "params.yaml" if model_dir and (model_dir / "params.yaml").is_file() else None


def trained_on(model_dir: Path) -> str | None:
    """The data set a model folder was trained on, as its config records it (None if it does not)."""
    return read_config(model_dir / "config.json").get("dataset")


def demo_world_note(model_dir: Path) -> str | None:
    """What to tell someone captioning their photos with a model of the demo world (else None)."""
    if trained_on(model_dir) != DEMO_WORLD:
        return None
    return (f"{model_dir} was trained on the built-in demo world (coloured shapes): it describes every image in "
            "that world's words; train on your own data set for real photos (see README)")


def quiet() -> None:
    """Only warnings and errors on stderr: the libraries' set-up logs, progress bars and
    deprecation notices say nothing to someone captioning a photo."""
    logging.getLogger().setLevel(logging.WARNING)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("inputs", nargs="+", type=Path, help="image files or folders")
    parser.add_argument("--model", help=f"a model folder or Hugging Face Hub id (default: {CAPTIONER} beside --params)")
    parser.add_argument("--params", type=Path,
                        help="the parameters naming the extractors' weights (and decoding); their relative paths "
                             "are read from this file's folder, so the command runs from any folder (default: the "
                             "model folder's own params.yaml, as a release holds, else ./params.yaml)")
    parser.add_argument("--decode", choices=METHODS, help="override evaluate.decode.method")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="override store.precision: the extractors and decoding run at it, whatever precision "
                             "the model's features were made at (bf16 on CPU and CUDA, fp16 on CUDA)")
    parser.add_argument("--jsonl", action="store_true", help="JSON lines (errors included) instead of text")
    parser.add_argument("--verbose", action="store_true", help="the extractors' logs and progress bars on stderr")
    args = parser.parse_args(argv)
    with stopping_on_signals():  # a kill or Ctrl-C removes the scratch store
        return run_command("graphcap-caption", lambda: _caption_and_print(args))


def _caption_and_print(args: argparse.Namespace) -> int:
    paths, refused = collect_images(args.inputs)  # the inputs and --model: where the user is
    if not paths and not refused:
        raise FileNotFoundError(f"no image files ({' '.join(sorted(IMAGE_SUFFIXES))}) in "
                                f"{', '.join(map(str, args.inputs))}")
    model, absolute = (model_folder(args.model).resolve() if args.model else None), [p.resolve() for p in paths]
    params_file = args.params or own_params(model) or Path("params.yaml")
    with contextlib.chdir(project_of(params_file)):  # the parameters' paths (assets/, weights/): their project's
        params = start(params_file.resolve())
        if not args.verbose:
            quiet()
        if args.decode:
            decode = dataclasses.replace(params.evaluate.decode, method=args.decode)
            params = dataclasses.replace(params, evaluate=dataclasses.replace(params.evaluate, decode=decode))
        if args.precision:
            params = dataclasses.replace(params, store=dataclasses.replace(params.store, precision=args.precision))
        model = model or CAPTIONER.resolve()
        note = demo_world_note(model)
        if note:
            print(f"note: {note}", file=sys.stderr)
        results = [{"file": str(path), "error": why} for path, why in refused.items()]
        if paths:
            captioned = caption_files(absolute, model, params, device_of(params.store.device), bool(args.precision))
            results += [{**record, "file": str(path)} for record, path in zip(captioned, paths)]
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
