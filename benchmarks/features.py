"""Feature-stage benchmark: prints ratios measured side by side in one run, on this machine.

    python benchmarks/features.py [--images 600]

Run after `dvc repro` (it reads data/manifest.json and the demo images, and times a no-op
`dvc repro` of the project). Figures:
- extraction throughput of each image stage's code path (DataLoader decoding + batched forward)
  against the pure model forward on the same, already decoded batches (goal ≥ 90%);
- KNN graph time against region-stage time (goal ≤ 1%), FAISS against the batched torch path;
- bytes per image stored, per kind, and padded+count against flat+offsets for the regions;
- a no-op `dvc repro` (goal ≤ 3 s).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from torchvision.transforms.functional import to_tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corpus.datasets import image_paths  # noqa: E402
from features.clip import encode_images, load_clip  # noqa: E402
from features.config import KnnConfig  # noqa: E402
from features.detection import pad_regions  # noqa: E402
from features.detectors import detect_regions, load_detector  # noqa: E402
from features.images import image_batches, load_rgb  # noqa: E402
from features.knn import knn_graphs  # noqa: E402
from pipeline.app import load_manifest  # noqa: E402
from pipeline.params import load_params  # noqa: E402


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def clip_throughput(params, paths) -> tuple[float, float]:
    clip = load_clip(params.clip, torch.device("cpu"))
    batch = params.clip.batch_size
    decoded = [clip.preprocess(load_rgb(p)) for p in paths]

    def pure() -> None:
        with torch.no_grad():
            for s in range(0, len(decoded), batch):
                clip.model.encode_image(torch.stack(decoded[s:s + batch]))

    _, t_pure = timed(pure)
    _, t_stage = timed(encode_images, clip, paths, batch, params.store.num_workers)
    return len(paths) / t_stage, len(paths) / t_pure


def region_throughput(params, paths):
    detector, _ = load_detector(params.regions, torch.device("cpu"))
    batch = params.regions.batch_size
    decoded = [to_tensor(load_rgb(p)) for p in paths]
    results = []

    def pure() -> None:
        for s in range(0, len(decoded), batch):
            results.extend(detect_regions(detector, decoded[s:s + batch], params.regions))

    def stage() -> None:
        for items in image_batches(paths, to_tensor, batch, params.store.num_workers):
            detect_regions(detector, [d.image for d in items], params.regions)

    _, t_pure = timed(pure)
    _, t_stage = timed(stage)
    arrays = pad_regions(results, params.regions.max_regions, results[0].features.shape[1])
    return len(paths) / t_stage, len(paths) / t_pure, t_stage, arrays


def storage(arrays: dict[str, np.ndarray], n: int) -> dict[str, float]:
    """Bytes per image of the regions, padded+count against flat+offsets, and random-read speed."""
    counts = arrays["counts"]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        padded, flat = Path(tmp, "padded.h5"), Path(tmp, "flat.h5")
        with h5py.File(padded, "w") as f:
            f.create_dataset("features", data=arrays["features"], chunks=(1, *arrays["features"].shape[1:]))
            f.create_dataset("counts", data=counts)
        rows = np.concatenate([arrays["features"][i, :c] for i, c in enumerate(counts)])
        with h5py.File(flat, "w") as f:
            f.create_dataset("features", data=rows, chunks=(min(len(rows), 64), rows.shape[1]))
            f.create_dataset("offsets", data=np.concatenate([[0], np.cumsum(counts)]))
        order = np.random.default_rng(0).permutation(n)
        for name, path in (("padded", padded), ("flat", flat)):
            with h5py.File(path, "r") as f:
                start = time.perf_counter()
                if name == "padded":
                    for i in order:
                        f["features"][i, : counts[i]]
                else:
                    offsets = f["offsets"][()]
                    for i in order:
                        f["features"][offsets[i]:offsets[i + 1]]
                out[f"{name}_read_images_per_s"] = n / (time.perf_counter() - start)
            out[f"{name}_bytes_per_image"] = path.stat().st_size / n
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600)
    args = parser.parse_args()
    torch.set_num_threads(2)
    params = load_params(Path("params.yaml"))
    manifest = load_manifest()
    paths = image_paths(manifest)[: args.images]
    n = len(paths)

    clip_stage, clip_pure = clip_throughput(params, paths)
    reg_stage, reg_pure, t_regions, arrays = region_throughput(params, paths)
    graphs = {}
    for backend in ("torch", "faiss"):
        cfg = KnnConfig(**{**params.knn.__dict__, "backend": backend})
        _, graphs[backend] = timed(knn_graphs, arrays["features"].astype(np.float32), arrays["boxes"],
                                   arrays["counts"], np.full((n, 2), 128), cfg)
    stored = {kind: sum(p.stat().st_size for p in Path(params.store.dir, kind).glob("shard-*.h5"))
              / len(manifest["images"]) for kind in ("clip_image", "regions", "knn", "clip_text")}
    subprocess.run(["dvc", "repro"], capture_output=True)  # make sure it is up to date
    _, t_noop = timed(subprocess.run, ["dvc", "repro"], capture_output=True, check=True)
    io = storage(arrays, n)

    print(f"\nFeature-stage benchmark, {n} demo images, CPU ({torch.get_num_threads()} threads)\n")
    print(f"clip_image: stage {clip_stage:8.1f} img/s, pure forward {clip_pure:8.1f} img/s  -> {clip_stage / clip_pure:6.1%}")
    print(f"regions:    stage {reg_stage:8.1f} img/s, pure forward {reg_pure:8.1f} img/s  -> {reg_stage / reg_pure:6.1%}")
    print(f"knn (torch) {graphs['torch']:.4f} s = {graphs['torch'] / t_regions:.3%} of the region stage's {t_regions:.1f} s")
    print(f"knn (faiss) {graphs['faiss']:.4f} s: torch is {graphs['faiss'] / graphs['torch']:.1f}x faster")
    print("stored bytes per image: " + ", ".join(f"{k} {v:,.0f}" for k, v in stored.items()))
    print(f"regions padded+count {io['padded_bytes_per_image']:,.0f} B/img, {io['padded_read_images_per_s']:,.0f} img/s "
          f"random reads; flat+offsets {io['flat_bytes_per_image']:,.0f} B/img, {io['flat_read_images_per_s']:,.0f} img/s")
    print(f"no-op dvc repro: {t_noop:.2f} s")


if __name__ == "__main__":
    main()
