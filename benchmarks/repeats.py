"""Does blocking repeated n-grams help? The trained model (models/captioner) decodes the validation
split with ``evaluate.decode`` as configured and with ``no_repeat_ngram_size`` 2, 3 and 4, side by
side in one run: CIDEr (raw references, PTB tokenizer), the demo world's object precision and
recall and relation accuracy, and how many captions name an object twice.

    python benchmarks/repeats.py [--split val] [--sizes 0 2 3 4]

Run after `dvc repro`; the evaluate stage's default follows what this measures.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from corpus.datasets import scorable  # noqa: E402
from eval.metrics import cider  # noqa: E402
from eval.world_truth import world_scores  # noqa: E402
from pipeline.app import load_manifest  # noqa: E402
from pipeline.model_inputs import open_features, split_indices  # noqa: E402
from pipeline.params import load_params  # noqa: E402
from pipeline.paths import CAPTIONER  # noqa: E402
from train.data import Images  # noqa: E402
from train.decode import caption_images  # noqa: E402
from train.model import load_captioner  # noqa: E402
from world.grammar import read_caption  # noqa: E402


def names_an_object_twice(caption: str) -> bool:
    mentions = read_caption(caption).mentions
    return len(set(mentions)) < len(mentions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", default="val")
    parser.add_argument("--sizes", type=int, nargs="+", default=[0, 2, 3, 4])
    args = parser.parse_args()
    params, manifest = load_params(Path("params.yaml")), load_manifest()
    model, _ = load_captioner(CAPTIONER)
    features = open_features(params, manifest, with_tokens=model.clip_tail is not None,
                             with_region_clip=model.cfg.reads_region_clip)
    indices = split_indices(manifest, args.split, features)
    images = manifest["images"]
    ids = [images[i]["id"] for i in indices]
    references = {images[i]["id"]: images[i]["raw"] for i in indices}
    truth = {images[i]["id"]: images[i].get("extra", {}) for i in indices}
    print(f"{len(ids)} {args.split} images, {params.evaluate.decode.method} decoding (CPU)\n")
    print(f"{'no_repeat':>9} {'CIDEr':>7} {'obj P':>7} {'obj R':>7} {'rel acc':>8} {'twice':>6}")
    for size in args.sizes:
        cfg = dataclasses.replace(params.evaluate.decode, no_repeat_ngram_size=size)
        captions = [scorable(c) for c in caption_images(model, Images(features, indices), cfg,
                                                         params.evaluate.batch_size, torch.device("cpu"))]
        candidates = dict(zip(ids, captions))
        world = world_scores(candidates, truth)[0] if all("objects" in t for t in truth.values()) else {}
        print(f"{size:>9} {cider(references, candidates):7.3f} {world.get('world/object_precision', float('nan')):7.3f} "
              f"{world.get('world/object_recall', float('nan')):7.3f} {world.get('world/relation_accuracy', float('nan')):8.3f} "
              f"{sum(map(names_an_object_twice, captions)):6d}")


if __name__ == "__main__":
    main()
