"""Retrain the demo encoders: ``python -m tools.demo_encoders [--out assets/demo]``.

Generates its own world (a seed different from the pipeline's, so that the encoders never see
the demo test images), then trains the tokenizer, GPT-2, CLIP and the detector one after the
other and writes them, with a ``training.json`` of what they reached, to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import open_clip
import torch
from torchvision.transforms.functional import to_tensor

from corpus.datasets import TextConfig, build_manifest, image_paths
from features.images import load_rgb
from pipeline.params import load_params
from tools.demo_encoders import clip, detector, language
from world.config import WorldConfig
from world.generate import generate_world
from world.grammar import SHAPES

log = logging.getLogger("demo_encoders")

CLASSES = ["__background__", *SHAPES]


def _targets(entries: list[dict]) -> list[dict[str, torch.Tensor]]:
    return [{
        "boxes": torch.tensor([o["box"] for o in e["extra"]["objects"]], dtype=torch.float32),
        "labels": torch.tensor([CLASSES.index(o["shape"]) for o in e["extra"]["objects"]], dtype=torch.int64),
    } for e in entries]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("assets/demo"))
    parser.add_argument("--images", type=int, default=2000, help="training images")
    parser.add_argument("--clip-epochs", type=int, default=10)
    parser.add_argument("--detector-epochs", type=int, default=3)
    parser.add_argument("--gpt2-epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="the demo's params, whose `regions` section shapes the detector trained here")
    args = parser.parse_args()
    detector_cfg = load_params(args.params).regions
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    report: dict[str, float] = {}
    out = args.out
    for sub in ("tokenizer", "gpt2", "clip", "detector"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        world = WorldConfig(n_train=args.images, n_val=200, n_test=0, seed=args.seed)
        source = generate_world(world, Path(tmp))
        manifest = build_manifest(source, Path(tmp), TextConfig())
        train = [e for e in manifest["images"] if e["split"] == "train"]
        val = [e for e in manifest["images"] if e["split"] == "val"]
        pictures = {e["id"]: load_rgb(p) for e, p in zip(manifest["images"], image_paths(manifest))}

    t0 = time.time()
    captions = [c for e in train for c in e["captions"]]
    tokenizer = language.train_tokenizer(captions)
    gpt2 = language.train_gpt2(tokenizer, captions, args.gpt2_epochs, args.seed)
    language.save_language(tokenizer, gpt2, out / "tokenizer", out / "gpt2")
    report["gpt2_seconds"] = time.time() - t0

    t0 = time.time()
    config_path = out / "clip" / f"{clip.NAME}.json"
    clip.write_config(config_path, len(tokenizer), tokenizer.eos_token_id)
    open_clip.add_model_config(config_path)
    _, _, preprocess = open_clip.create_model_and_transforms(clip.NAME)
    as_clip = lambda entries: torch.stack([preprocess(pictures[e["id"]]) for e in entries])  # noqa: E731
    model = clip.train_clip(config_path, out / "tokenizer", as_clip(train), [e["captions"] for e in train],
                            args.clip_epochs, args.seed)
    report["clip_val_r_at_1"] = clip.retrieval_recall_at_1(model, out / "tokenizer", as_clip(val),
                                                           [e["captions"][0] for e in val])
    clip.save_clip(model, out / "clip" / f"{clip.NAME}.safetensors")
    report["clip_seconds"] = time.time() - t0

    t0 = time.time()
    as_tensor = lambda entries: [to_tensor(pictures[e["id"]]) for e in entries]  # noqa: E731
    det = detector.train_detector(detector_cfg, len(CLASSES), as_tensor(train), _targets(train),
                                  args.detector_epochs, args.seed)
    report["detector_val_recall_iou50"], report["detector_val_label_accuracy"] = detector.box_recall(
        det, as_tensor(val), _targets(val))
    detector.save_detector(det, out / "detector" / "demo_tiny.safetensors")
    (out / "detector" / "classes.json").write_text(json.dumps(CLASSES) + "\n")
    report["detector_seconds"] = time.time() - t0

    (out / "training.json").write_text(json.dumps({k: round(v, 4) for k, v in report.items()}, indent=2) + "\n")
    log.info("done: %s", report)


if __name__ == "__main__":
    main()
