"""`graphcap-caption` on a folder of photos against its models' own forwards, side by side in one run.

    python benchmarks/caption.py --model PROJECT/models/release [--photos 200] [--precision fp32]

``--model``: a self-contained release folder (its params.yaml names the extractors), for the
paper's sizes the one `python -m tools.paper_check --keep` leaves in its project. The photos
are the real ones of ../shared/data/real_sample, each also mirrored, shrunk and cropped until
there are ``--photos`` distinct files (written to a temporary folder). Figures:
- the command as a user runs it (a subprocess in another folder, `--jsonl`): wall seconds for
  the folder and for one photo (its start-up: imports, loading the networks), images/s, and its
  peak RSS (the child's own, from wait4);
- the pure work on the same photos, already decoded and in memory: CLIP's image forward in the
  command's batches, the detector's forward in its batches (and CLIP on the region crops where
  the model reads them), and decoding in evaluate.batch_size batches of the same features;
- the ratio of the pure sum to the command, whole and after start-up (goal >= 80%).
Results: printed, and benchmarks/results/caption.json.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import ImageOps
from torch.utils.data import DataLoader
from torchvision.transforms.functional import to_tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from features.clip import encode_region_crops, load_clip  # noqa: E402
from features.detection import pad_regions  # noqa: E402
from features.detectors import detect_regions, load_detector  # noqa: E402
from features.images import load_rgb  # noqa: E402
from features.precision import autocast  # noqa: E402
from pipeline.app import project_of, start  # noqa: E402
from pipeline.caption import NewImages, own_params  # noqa: E402
from pipeline.params import Params  # noqa: E402
from tools.paper_check import find_real_sample  # noqa: E402
from train.data import Images, collate  # noqa: E402
from train.decode import decode  # noqa: E402

RESULTS = ROOT / "benchmarks/results/caption.json"
CPU = torch.device("cpu")
VARIANTS = {  # distinct files from one photo: the same content at other sizes and crops
    "orig": lambda im: im,
    "mirror": ImageOps.mirror,
    "small": lambda im: im.resize((im.width * 3 // 4, im.height * 3 // 4)),
    "crop": lambda im: im.crop((im.width // 10, im.height // 10, im.width, im.height)),
    "mirror-small": lambda im: ImageOps.mirror(im).resize((im.width * 2 // 3, im.height * 2 // 3)),
}


def write_photos(sample: Path, folder: Path, n: int) -> list[Path]:
    """``n`` JPEGs: each real photo in each variant in turn, until there are ``n``."""
    entries = json.loads((sample / "dataset.json").read_text())["images"]
    originals = [sample / "images" / e["filepath"] / e["filename"] for e in entries]
    paths = []
    for k in range(n):
        name, variant = list(VARIANTS.items())[k // len(originals) % len(VARIANTS)]
        path = folder / f"{k:04d}-{name}.jpg"
        variant(load_rgb(originals[k % len(originals)])).save(path, quality=92)
        paths.append(path)
    return paths


def run_command(model: Path, inputs: list[Path], cwd: Path) -> tuple[float, float, int]:
    """`graphcap-caption` as a user runs it: (wall seconds, peak RSS GB, photos captioned)."""
    started = time.perf_counter()
    with (cwd / "caption.out").open("w") as out:
        run = subprocess.Popen([sys.executable, "-m", "pipeline.caption", "--model", str(model), "--jsonl",
                                *map(str, inputs)], cwd=cwd, stdout=out, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONPATH=str(ROOT)))
        _, status, usage = os.wait4(run.pid, 0)
    seconds = time.perf_counter() - started
    records = [json.loads(line) for line in (cwd / "caption.out").read_text().splitlines()]
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"graphcap-caption failed: {run.stderr.read()[-2000:]}")
    return seconds, usage.ru_maxrss / 2**20, sum("caption" in r for r in records)


def timed(fn) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        fn()
    return time.perf_counter() - start


def pure_extractors(params: Params, paths: list[Path], reads_region_clip: bool) -> dict[str, float]:
    """Seconds of each extractor's forward on the photos decoded beforehand, in the command's batches."""
    precision, out = params.store.precision, {}
    clip = load_clip(params.clip, CPU, precision)
    crops = [clip.preprocess(load_rgb(p)) for p in paths]
    size = params.clip.batch_size
    with autocast(precision, CPU):
        out["clip_image"] = timed(lambda: [clip.model.encode_image(torch.stack(crops[s:s + size]))
                                           for s in range(0, len(crops), size)])
    detector, _ = load_detector(params.regions, CPU, precision)
    images, size = [to_tensor(load_rgb(p, 2 * params.regions.max_size)) for p in paths], params.regions.batch_size
    found = []
    out["regions"] = timed(lambda: [found.extend(detect_regions(detector, images[s:s + size], params.regions))
                                    for s in range(0, len(images), size)])
    if reads_region_clip:
        padded = pad_regions(found, params.regions.max_regions, found[0].features.shape[1])
        out["region_clip"] = timed(lambda: encode_region_crops(clip, paths, padded["boxes"], padded["counts"], 0))
    return out


def pure_decoding(images: NewImages, paths: list[Path]) -> float:
    """Seconds of decoding the photos' features, read into memory beforehand, in evaluate.batch_size batches."""
    cfg = images.params.evaluate
    with images.features(paths) as (features, good, _):
        batches = list(DataLoader(Images(features, good), batch_size=cfg.batch_size, collate_fn=collate))
    with autocast(images.params.store.precision, CPU):
        return timed(lambda: [decode(images.model, batch, cfg.decode, images.rerank) for batch in batches])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a release folder (with its own params.yaml)")
    parser.add_argument("--photos", type=int, default=200)
    args = parser.parse_args(argv)
    sample, model = find_real_sample(), args.model.resolve()
    if sample is None or own_params(model) is None:
        raise SystemExit("benchmarks/caption.py: needs ../shared/data/real_sample and a release folder")
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="graphcap-caption-bench-") as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        paths = write_photos(sample, folder, args.photos)
        one_s, _, _ = run_command(model, paths[:1], Path(tmp))
        wall, rss, captioned = run_command(model, [folder], Path(tmp))
        with contextlib.chdir(project_of(own_params(model))):
            params = start(own_params(model))
            with NewImages(model, params, CPU) as images:
                pure = pure_extractors(params, paths, images.model.cfg.reads_region_clip)
                pure["decoding"] = pure_decoding(images, paths)
    total = sum(pure.values())
    results = {"machine": f"CPU, {torch.get_num_threads()} threads", "photos": len(paths), "captioned": captioned,
               "precision": params.store.precision, "command_s": wall, "command_one_photo_s": one_s,
               "command_img_per_s": len(paths) / wall, "peak_rss_gb": rss, "pure_s": pure, "pure_total_s": total,
               "pure_img_per_s": len(paths) / total, "of_command": total / wall,
               "of_command_after_startup": total * (len(paths) - 1) / len(paths) / (wall - one_s)}
    print(json.dumps(results, indent=1))
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
