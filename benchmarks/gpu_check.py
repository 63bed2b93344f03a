"""GPU check: the figures behind the one-GPU plan for COCO (docs/scale.md), measured for real on one
CUDA device in about 10 minutes and printed as one table.

    python benchmarks/gpu_check.py                       # on a CUDA machine
    python benchmarks/gpu_check.py --device cpu --images 4 --batch 2 --steps 1   # the tests' dry run

Everything runs at presets/paper.yaml's settings, with random weights built here as `make
paper-check` builds them (open_clip ViT-B-32, torchvision R50-FPN at 800 px, GPT-2 small: no hub is
reached), on synthetic 640x480 JPEG photos and a synthetic HDF5 store of paper-size features.
Rows:
- clip_image, regions: the stage's own code (pipeline/extract.py: DataLoader decoding with
  store.num_workers, batched forward) at each store.precision (fp32, bf16, and fp16 on CUDA)
  against the pure fp32 forward on pre-decoded batches already on the device, in img/s; GFLOP
  per image by torch's FlopCounterMode;
- knn: the graphs of those images' regions, FAISS (on the GPU when it has GPU support) against
  the batched torch path;
- train_fp32, train_bf16: a training step at train.batch_size (the trainer's own step), seconds,
  peak memory (device memory on CUDA; growth of the process's peak RSS on the CPU) and GFLOP;
- loader: steps fed by the HDF5 loader (train.num_workers workers) against the same steps on
  batches already in memory; the loader's share of a step is 1 - in-memory / fed.
Without CUDA it says so and exits 0, unless --device cpu asks for the CPU.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from torchvision.transforms.functional import to_tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from features.clip import ClipTail, load_clip  # noqa: E402
from features.detectors import detect_regions, load_detector  # noqa: E402
from features.images import load_rgb  # noqa: E402
from features.knn import knn_graphs  # noqa: E402
from features.precision import native_bf16  # noqa: E402
from features.store import shard_path, shard_slices, write_shard  # noqa: E402
from pipeline import extract  # noqa: E402
from pipeline.params import Params, load_params  # noqa: E402
from tools.paper_check import build_weights  # noqa: E402
from train.data import CachedFeatures, CaptionPairs, StoreSpec, collate  # noqa: E402
from train.distributed import GlobalBatches, World  # noqa: E402
from train.model import Captioner, FeatureDims, load_gpt2  # noqa: E402
from train.trainer import Objective, Phase, mixed_precision, set_phase, train_epoch  # noqa: E402

CAPTIONS = ["a man riding a wave on top of a surfboard", "two dogs play with a red ball on the grass",
            "a plate of food with broccoli and rice", "a red bus parked on the side of a street",
            "a cat sleeping on a wooden bench"]  # five per image, as in COCO
Row = tuple[str, str, str]  # (figure, measured, note)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(device: torch.device, fn: Callable[[], object]) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def gflop(fn: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def paper_params(weights: dict[str, str], folder: Path) -> Params:
    """presets/paper.yaml with the locally built weights."""
    raw = yaml.safe_load((ROOT / "presets/paper.yaml").read_text())
    raw["clip"]["pretrained"], raw["regions"]["weights"], raw["model"]["gpt2"] = (
        weights["clip"], weights["detector"], weights["gpt2"])
    raw["regions"]["classes"] = str(ROOT / raw["regions"]["classes"])
    (folder / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_params(folder / "params.yaml")


def write_photos(folder: Path, n: int) -> dict:
    """``n`` synthetic 640x480 JPEGs (smooth gradients and noise) and a manifest naming them."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    entries = []
    for i in range(n):
        ramp = np.linspace(0, 255, 640)[None, :, None] * rng.uniform(0.2, 1, 3)
        pixels = np.clip(ramp + rng.normal(0, 30, (480, 640, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:06d}.jpg", quality=90)
        entries.append({"id": str(i), "path": f"{i:06d}.jpg", "split": "train", "captions": CAPTIONS})
    return {"image_root": str(folder), "images": entries}


def extraction_rows(params: Params, manifest: dict, device: torch.device) -> tuple[list[Row], dict]:
    """clip_image and regions: stage path against pure forward; returns the stored region arrays too."""
    entries, paths = manifest["images"], [Path(manifest["image_root"]) / e["path"] for e in manifest["images"]]
    n, rows = len(entries), []
    clip = load_clip(params.clip, device)
    batch = params.clip.batch_size
    decoded = [clip.preprocess(load_rgb(p)) for p in paths]
    batches = [torch.stack(decoded[s:s + batch]).to(device) for s in range(0, n, batch)]
    with torch.no_grad():
        t_pure = seconds(device, lambda: [clip.model.encode_image(b) for b in batches])
        flops = gflop(lambda: clip.model.encode_image(batches[0])) / len(batches[0])
    for precision in precisions(device):
        stage = extract.clip_image(at_precision(params, precision), manifest, device)
        t_stage = seconds(device, lambda: stage(0, entries, lambda k: None))
        rows.append((f"clip_image {precision} stage / pure fp32", f"{n / t_stage:,.1f} / {n / t_pure:,.1f} img/s = "
                     f"{t_pure / t_stage:.0%}", f"{flops:.1f} GFLOP/img; store.num_workers {params.store.num_workers}"))
    detector, _ = load_detector(params.regions, device)
    batch = params.regions.batch_size
    images = [to_tensor(load_rgb(p)).to(device) for p in paths]
    t_pure = seconds(device, lambda: [detect_regions(detector, images[s:s + batch], params.regions)
                                      for s in range(0, n, batch)])
    flops = gflop(lambda: detect_regions(detector, images[:1], params.regions))
    regions: dict = {}
    for precision in precisions(device):  # the fp32 run's regions feed the rows after
        stage = extract.regions(at_precision(params, precision), manifest, device)
        t_stage = seconds(device, lambda: regions.setdefault(precision, stage(0, entries, lambda k: None)[0]))
        rows.append((f"regions {precision} stage / pure fp32", f"{n / t_stage:,.2f} / {n / t_pure:,.2f} img/s = "
                     f"{t_pure / t_stage:.0%}", f"{flops:.0f} GFLOP/img at {params.regions.min_size} px"))
    return rows, regions["fp32"]


def precisions(device: torch.device) -> tuple[str, ...]:
    """The store.precision modes measured here: fp16 on CUDA only, bf16 where it is native (an
    emulated bf16 R50-FPN takes minutes a photo: benchmarks/precision.py measures that)."""
    return ("fp32", "bf16", "fp16") if device.type == "cuda" else ("fp32", "bf16") if native_bf16(device) else ("fp32",)


def at_precision(params: Params, precision: str) -> Params:
    return replace(params, store=replace(params.store, precision=precision))


def knn_row(params: Params, regions: dict, copies: int) -> Row:
    """KNN over the regions of the images, repeated ``copies`` times to be measurable."""
    arrays = [np.concatenate([regions[k]] * copies) for k in ("features", "boxes", "counts", "image_sizes")]
    arrays[0] = arrays[0].astype(np.float32)
    times = {}
    for backend in ("torch", "faiss"):
        start = time.perf_counter()
        knn_graphs(*arrays, replace(params.knn, backend=backend))
        times[backend] = time.perf_counter() - start
    n = len(arrays[0])
    return ("knn faiss / torch", f"{n / times['faiss']:,.0f} / {n / times['torch']:,.0f} img/s",
            "faiss on the GPU when its build has GPU support")


def paper_model(params: Params, region_dim: int, device: torch.device) -> Captioner:
    """The preset's captioner (with its own copy of CLIP's tail when the preset fine-tunes it)."""
    gpt2, tokenizer = load_gpt2(params.model.gpt2)
    dims = FeatureDims(clip=512, region=region_dim, scene_bank=params.keywords.scene_bank_size, object_bank=91)
    tail = ClipTail(load_clip(params.clip, torch.device("cpu")).model.visual) if params.model.finetune_clip else None
    torch.manual_seed(0)
    model = Captioner(params.model, dims, gpt2, tokenizer, torch.randn(dims.scene_bank, 512), torch.randn(91, 512),
                      tail)
    set_phase(model, Phase.FULL)  # GPT-2 trains too (the heavier step)
    return model.to(device).train()


def write_store(folder: Path, regions: dict, n_images: int, shard_size: int, k: int, tokens: bool) -> list[str]:
    """A store of ``n_images`` paper-size images (the measured images' regions, repeated; with
    ``tokens``, CLIP's (50, 768) tokens that fine-tuning its tail reads)."""
    rng, ids = np.random.default_rng(0), [str(i) for i in range(n_images)]
    take = np.arange(n_images) % len(regions["counts"])
    n_max = regions["features"].shape[1]
    neighbors, weights = knn_graphs(regions["features"].astype(np.float32), regions["boxes"], regions["counts"],
                                    regions["image_sizes"], load_params(ROOT / "presets/paper.yaml").knn)
    for index, part in enumerate(shard_slices(n_images, shard_size)):
        rows, m = take[part], part.stop - part.start
        kinds = {
            "clip_image": {"embeddings": rng.normal(size=(m, 512)).astype(np.float16),
                           **({"tokens": rng.normal(size=(m, 50, 768)).astype(np.float16)} if tokens else {})},
            "regions": {name: regions[name][rows] for name in ("features", "boxes", "scores", "labels", "counts",
                                                                "image_sizes")},
            "knn": {"neighbors": neighbors[rows], "weights": weights[rows].astype(np.float16)},
            "clip_text": {"embeddings": rng.normal(size=(5 * m, 512)).astype(np.float16),
                          "offsets": np.arange(0, 5 * m + 1, 5, dtype=np.int64)},
            "region_keywords": {"ids": rng.integers(0, 91, (m, n_max, k)).astype(np.int32),
                                "scores": rng.random((m, n_max, k)).astype(np.float16)},
        }
        for kind, arrays in kinds.items():
            write_shard(shard_path(folder, kind, index), kind, ids[part], arrays, {}, part.start)
    return ids


def paper_training(params: Params, regions: dict, device: torch.device, steps: int,
                   folder: Path) -> tuple[Captioner, DataLoader, CachedFeatures]:
    """The preset's captioner in phase 2 and the trainer's loader over a store of about ``steps``
    batches of paper-size features in ``folder`` (close the features after)."""
    cfg = params.train
    model = paper_model(params, regions["features"].shape[-1], device)
    n_images = max(2, -(-cfg.batch_size * steps // len(CAPTIONS)))  # about ``steps`` batches of pairs
    tokens = model.clip_tail is not None
    ids = write_store(folder, regions, n_images, params.store.shard_size, params.model.keyword_top_k, tokens)
    features = CachedFeatures(StoreSpec(folder, params.store.shard_size, ids, {}, params.store.max_open_shards),
                              with_tokens=tokens)
    pairs = CaptionPairs(features, list(range(n_images)), [CAPTIONS] * n_images, model.tokenizer, cfg.max_tokens)
    sampler = GlobalBatches(len(pairs), cfg.batch_size, cfg.seed, 0, World(), pairs.item_shards(),
                            params.store.max_open_shards // 2)
    fed = DataLoader(pairs, batch_sampler=sampler, num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0,
                     collate_fn=partial(collate, pad_id=model.tokenizer.pad_token_id))
    return model, fed, features


def training_rows(params: Params, regions: dict, device: torch.device, steps: int, folder: Path) -> list[Row]:
    """Training step in fp32 and bf16, then the loader's share of a step."""
    cfg = params.train
    model, fed, features = paper_training(params, regions, device, steps, folder)
    # also starts the workers, which stay: steady state, as in a long epoch; whole captions make
    # more batches than ``steps`` (a dry run's 2 images: 5), and each row times ``steps`` of them
    in_memory = list(fed)[:steps]
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    peak, rows = PeakMemory(device), []
    for precision in ("fp32", "bf16"):
        step_cfg = replace(cfg, precision=precision)
        autocast, scaler = mixed_precision(precision, device)

        def run(loader) -> None:
            train_epoch(Objective(model, step_cfg), loader, optimizer, scaler, autocast, step_cfg, device, precision)

        run(in_memory[:1])  # warm-up (kernels, allocator)
        peak.reset()
        t_step = seconds(device, lambda: run(in_memory)) / len(in_memory)
        rows.append((f"train step {precision}, batch {cfg.batch_size}", f"{t_step:.3f} s, peak {peak.mb():,.0f} MB",
                     f"{gflop(lambda: run(in_memory[:1])):,.0f} GFLOP/step; "
                     f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters"))
    first = FirstBatches(fed, steps)
    t_fed = seconds(device, lambda: run(first)) / len(first)
    rows.append(("loader share of a step", f"{max(0.0, 1 - t_step / t_fed):.1%}",
                 f"bf16 step fed by HDF5 ({cfg.num_workers} workers) {t_fed:.3f} s, in memory {t_step:.3f} s"))
    features.close()
    return rows


class FirstBatches:
    """The first ``n`` batches of a loader, with their count (the trainer divides by it)."""

    def __init__(self, loader: DataLoader, n: int):
        self.loader, self.n = loader, min(n, len(loader))

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.n)

    def __len__(self) -> int:
        return self.n


class PeakMemory:
    """Peak memory since :meth:`reset`: allocated device memory on CUDA; on the CPU, how far the
    process's peak RSS rose above its RSS at the reset (Linux: writing 5 to clear_refs resets VmHWM)."""

    def __init__(self, device: torch.device):
        self.device, self.base_kb = device, 0

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            Path("/proc/self/clear_refs").write_text("5")
            self.base_kb = _status_kb("VmRSS")

    def mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return (_status_kb("VmHWM") - self.base_kb) / 1024


def _status_kb(field: str) -> int:
    return next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith(field + ":"))


def _given(value: int | None, default: int) -> int:
    return default if value is None else value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (cpu: a dry run of the code path)")
    parser.add_argument("--images", type=int, default=256, help="photos for the extraction rows")
    parser.add_argument("--batch", type=int, help="training batch (default: the preset's train.batch_size)")
    parser.add_argument("--steps", type=int, default=20, help="training steps timed per row")
    parser.add_argument("--workers", type=int, help="DataLoader workers for decoding and for the training loader "
                        "(default: the preset's store.num_workers and train.num_workers)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing measured (run it on a CUDA machine, or --device cpu "
              "for a dry run of the code path)")
        return 0
    with tempfile.TemporaryDirectory(prefix="graphcap-gpu-check-") as tmp:
        work = Path(tmp)
        manifest = write_photos(work / "photos", args.images)
        params = paper_params(build_weights(work / "weights", CAPTIONS * 20), work)
        params = replace(params, train=replace(params.train, batch_size=args.batch or params.train.batch_size,
                                               num_workers=_given(args.workers, params.train.num_workers)),
                         store=replace(params.store, num_workers=_given(args.workers, params.store.num_workers)))
        rows, regions = extraction_rows(params, manifest, device)
        rows.append(knn_row(params, regions, copies=max(1, 5000 // args.images)))
        rows += training_rows(params, regions, device, args.steps, work / "store")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\ngraphcap GPU check on {name} (paper preset, random weights, {args.images} photos)\n")
    width = max(len(r[0]) for r in rows)
    for figure, measured, note in rows:
        print(f"{figure:<{width}}  {measured:<40}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
