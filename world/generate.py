"""The demo world's generator: images and a Karpathy split JSON that need no download.

Each image shows 1-4 coloured shapes of two sizes on one of four textured scene backgrounds.
Five captions per image name the objects with their attributes, a spatial relation between two
of them and the scene, so a captioner has to get attributes, relations and scene words right.

The data set is written in Karpathy split JSON (the format of dataset_coco.json), so it enters
the pipeline through the same adapter as MSCOCO or Flickr30k. Each image entry also carries the
ground truth (``scene`` and ``objects`` with boxes) that the demo detector is trained on and that
evaluation can judge captions against. Everything is deterministic given the seed.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import multiprocessing
import os
import random
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from tqdm import tqdm

from world.config import WorldConfig
from world.grammar import COLORS, SCENES, SHAPES, SIZES, WorldObject, make_captions

log = logging.getLogger(__name__)

DATASET_NAME = "demo_world"  # the "dataset" of its Karpathy JSON; a model trained on it records it


def _draw_background(draw: ImageDraw.ImageDraw, scene: str, size: int, rng: random.Random) -> None:
    """Paint a textured background whose look identifies the scene (muted colours, so that
    object colours stay distinct from it)."""
    if scene == "beach":
        horizon = int(size * rng.uniform(0.35, 0.5))
        draw.rectangle([0, 0, size, horizon], fill=(150, 200, 235))
        draw.rectangle([0, horizon, size, size], fill=(225, 205, 160))
        for _ in range(4):  # wave lines at the horizon
            y = horizon + rng.randint(2, 10)
            draw.line([0, y, size, y], fill=(190, 215, 230), width=1)
    elif scene == "forest":
        draw.rectangle([0, 0, size, size], fill=(70, 105, 70))
        for _ in range(6):  # tree trunks
            x = rng.randint(0, size)
            draw.rectangle([x, 0, x + rng.randint(3, 6), size], fill=(95, 75, 55))
    elif scene == "city":
        draw.rectangle([0, 0, size, size], fill=(150, 150, 155))
        x = 0
        while x < size:  # building silhouettes
            w, h = rng.randint(10, 24), rng.randint(size // 4, size // 2)
            draw.rectangle([x, 0, x + w, h], fill=(110, 110, 120))
            x += w + rng.randint(2, 6)
    elif scene == "snow":
        draw.rectangle([0, 0, size, size], fill=(235, 240, 248))
        for _ in range(40):  # snow flakes
            x, y = rng.randint(0, size), rng.randint(0, size)
            draw.ellipse([x, y, x + 2, y + 2], fill=(200, 210, 230))
    else:
        raise ValueError(f"unknown scene {scene!r}")


def _draw_object(draw: ImageDraw.ImageDraw, obj: WorldObject) -> None:
    x0, y0, x1, y1 = obj.box
    fill = COLORS[obj.color]
    if obj.shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    elif obj.shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    elif obj.shape == "star":
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
        points = [
            (cx + (r if k % 2 == 0 else r * 0.45) * math.sin(k * math.pi / 5),
             cy - (r if k % 2 == 0 else r * 0.45) * math.cos(k * math.pi / 5))
            for k in range(10)
        ]
        draw.polygon(points, fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")


def _place_objects(rng: random.Random, cfg: WorldConfig) -> list[WorldObject]:
    """Sample 1..max_objects non-overlapping objects (rejection sampling on boxes)."""
    n = rng.randint(1, cfg.max_objects)
    objects: list[WorldObject] = []
    for _ in range(200):
        if len(objects) == n:
            break
        size = rng.choice(tuple(SIZES))
        side = rng.randint(*SIZES[size])
        x0, y0 = rng.randint(2, cfg.image_size - side - 2), rng.randint(2, cfg.image_size - side - 2)
        box = (x0, y0, x0 + side, y0 + side)
        if any(_overlaps(box, o.box, margin=4) for o in objects):
            continue
        objects.append(WorldObject(rng.choice(SHAPES), rng.choice(tuple(COLORS)), size, box))
    return objects


def _overlaps(a: tuple[int, ...], b: tuple[int, ...], margin: int) -> bool:
    return not (a[2] + margin < b[0] or b[2] + margin < a[0] or a[3] + margin < b[1] or b[3] + margin < a[1])


def render_image(objects: list[WorldObject], scene: str, cfg: WorldConfig, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (cfg.image_size, cfg.image_size))
    draw = ImageDraw.Draw(image)
    _draw_background(draw, scene, cfg.image_size, rng)
    for obj in objects:
        _draw_object(draw, obj)
    return image


def _split_of(index: int, cfg: WorldConfig) -> str:
    if index < cfg.n_train:
        return "train"
    return "val" if index < cfg.n_train + cfg.n_val else "test"


def _make_image(index: int, cfg: WorldConfig, image_dir: Path) -> dict[str, Any]:
    """Render and save image ``index``; its Karpathy entry without sentence ids. Everything comes
    from the image's own random stream, so any worker may make any image."""
    rng = random.Random(f"{cfg.seed}-{index}")  # per-image stream: stable when sizes change
    scene = rng.choice(SCENES)
    objects = _place_objects(rng, cfg)
    filename = f"{index:06d}.png"
    render_image(objects, scene, cfg, rng).save(image_dir / filename)
    captions = make_captions(objects, scene, rng)
    return {
        "filepath": "images", "filename": filename, "imgid": index, "split": _split_of(index, cfg),
        "sentences": [{"raw": c, "tokens": c.replace(":", "").replace(",", "").split(), "imgid": index}
                      for c in captions],
        "scene": scene,
        "objects": [{"shape": o.shape, "color": o.color, "size": o.size, "box": list(o.box)} for o in objects],
    }


def generate_world(cfg: WorldConfig, out_dir: Path, workers: int | None = None) -> Path:
    """Write images to ``out_dir/images`` and the Karpathy JSON to ``out_dir/dataset.json``, in
    ``workers`` processes (default: one per CPU core); the output does not depend on their number."""
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    total = cfg.n_train + cfg.n_val + cfg.n_test
    make = functools.partial(_make_image, cfg=cfg, image_dir=image_dir)
    workers = workers or os.cpu_count() or 1
    with multiprocessing.Pool(workers) if workers > 1 else contextlib.nullcontext() as pool:
        made = pool.imap(make, range(total), chunksize=256) if pool else map(make, range(total))
        entries = list(tqdm(made, total=total, desc="world", unit="img"))
    sentid = 0
    for entry in entries:  # sentence ids run over the whole data set, in image order
        sentences = entry.pop("sentences")
        for sentence in sentences:
            sentence["sentid"], sentid = sentid, sentid + 1
        ground_truth = {key: entry.pop(key) for key in ("scene", "objects")}
        entry.update(sentids=[s["sentid"] for s in sentences], sentences=sentences, **ground_truth)
    dataset_path = out_dir / "dataset.json"
    tmp = dataset_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"dataset": DATASET_NAME, "images": entries}))
    tmp.replace(dataset_path)
    log.info("wrote %d images to %s", total, out_dir)
    return dataset_path
