"""store.precision side by side in one run: speed and fidelity of the extractors in bf16 against fp32.

    python benchmarks/precision.py [--photos 48] [--detector-photos 1] [--demo-images 200]

Two settings, each through the stages' own code (pipeline/extract.py: DataLoader decoding,
batched forward, the store's float16 rows):
- paper: presets/paper.yaml's networks at their real sizes with random weights (ViT-B/32 with
  QuickGELU, torchvision's R50-FPN at 800 px), on the real photos of ../shared/data/real_sample;
- demo: params.yaml's trained demo encoders on the demo world's images (run `dvc repro` first).
Per kind: images/s of the stage in fp32 and bf16 against the pure fp32 forward on pre-decoded
images; the cosine of each bf16 feature row to its fp32 row (min and mean); for the detector,
images whose region count is unchanged, each fp32 box's best IoU among the bf16 boxes (mean, and
the share ≥ 0.9), the region features' cosine on those matches and the scores' largest change;
on the demo world also the detector run whole under autocast (boxes decoded and suppressed in
bf16) to show what keeping them in fp32 buys, and the KNN graphs built on the bf16 regions.
Results: printed, and benchmarks/results/precision.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou
from torchvision.transforms.functional import to_tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.gpu_check import CAPTIONS, at_precision, paper_params  # noqa: E402
from features.clip import encode_region_crops, encode_texts, load_clip  # noqa: E402
from features.detectors import detect_regions, load_detector  # noqa: E402
from features.images import load_rgb  # noqa: E402
from features.knn import knn_graphs  # noqa: E402
from pipeline import extract  # noqa: E402
from pipeline.app import load_manifest  # noqa: E402
from pipeline.params import Params, load_params  # noqa: E402
from tools.paper_check import build_weights, find_real_sample  # noqa: E402

RESULTS = ROOT / "benchmarks/results/precision.json"
CPU = torch.device("cpu")


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def cosines(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Row cosines of two (n, d) arrays (rows with a NaN or zero norm left out): min and mean."""
    a, b = a.reshape(-1, a.shape[-1]).astype(np.float64), b.reshape(-1, b.shape[-1]).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    keep = np.isfinite(norms) & (norms > 0)
    cos = (a[keep] * b[keep]).sum(1) / norms[keep]
    return {"cos_min": float(cos.min()), "cos_mean": float(cos.mean())}


def clip_rows(params: Params, manifest: dict, paths: list[Path], captions: list[str]) -> dict[str, dict]:
    """clip_image (stage in fp32 and bf16 against the pure fp32 forward) and clip_text."""
    entries, out, n = manifest["images"], {}, len(paths)
    clip = load_clip(params.clip, CPU)
    decoded = [clip.preprocess(load_rgb(p)) for p in paths]
    batch = params.clip.batch_size
    with torch.no_grad():
        _, t_pure = timed(lambda: [clip.model.encode_image(torch.stack(decoded[s:s + batch])) for s in range(0, n, batch)])
    rows, texts = {}, {}
    for precision in ("fp32", "bf16"):
        compute = extract.clip_image(at_precision(params, precision), manifest, CPU)
        (arrays, _), seconds = timed(lambda: compute(0, entries, lambda k: None))
        rows[precision] = arrays["embeddings"]
        out[f"clip_image {precision}"] = {"img_per_s": n / seconds, "of_pure_fp32": t_pure / seconds}
        text_clip = load_clip(params.clip, CPU, precision)
        texts[precision], seconds = timed(lambda: encode_texts(text_clip, captions, batch))
        out[f"clip_text {precision}"] = {"captions_per_s": len(captions) / seconds}
    out["clip_image pure fp32"] = {"img_per_s": n / t_pure}
    out["clip_image bf16"].update(cosines(rows["fp32"], rows["bf16"]))
    out["clip_text bf16"].update(cosines(texts["fp32"], texts["bf16"]))
    return out


def region_fidelity(fp32: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> dict[str, float]:
    """The detector's output at another precision against fp32, image by image."""
    same, ious, pairs_a, pairs_b, score_change = 0, [], [], [], 0.0
    for i, (n_a, n_b) in enumerate(zip(fp32["counts"], other["counts"])):
        same += int(n_a == n_b)
        best, match = box_iou(torch.tensor(fp32["boxes"][i, :n_a]), torch.tensor(other["boxes"][i, :n_b])).max(dim=1)
        ious += best.tolist()
        pairs_a.append(fp32["features"][i, :n_a])
        pairs_b.append(other["features"][i, match.numpy()])
        score_change = max(score_change, float(np.abs(fp32["scores"][i, :n_a].astype(np.float32)
                                                      - other["scores"][i, match.numpy()]).max()))
    ious = np.array(ious)
    return {"same_count": same / len(fp32["counts"]), "iou_mean": float(ious.mean()), "iou_min": float(ious.min()),
            "iou_ge_0.9": float((ious >= 0.9).mean()), "score_max_change": score_change,
            **cosines(np.concatenate(pairs_a), np.concatenate(pairs_b))}


def region_rows(params: Params, manifest: dict, paths: list[Path], whole_autocast: bool) -> tuple[dict, dict]:
    """regions: the stage in fp32 and bf16 against the pure fp32 forward (and, with
    ``whole_autocast``, the fp32 detector run entirely under bf16 autocast); the stage's arrays."""
    entries, out, n, arrays = manifest["images"], {}, len(paths), {}
    detector, _ = load_detector(params.regions, CPU)
    images, batch = [to_tensor(load_rgb(p)) for p in paths], params.regions.batch_size
    _, t_pure = timed(lambda: [detect_regions(detector, images[s:s + batch], params.regions) for s in range(0, n, batch)])
    out["regions pure fp32"] = {"img_per_s": n / t_pure}
    for precision in ("fp32", "bf16"):
        compute = extract.regions(at_precision(params, precision), manifest, CPU)
        (arrays[precision], _), seconds = timed(lambda: compute(0, entries, lambda k: None))
        out[f"regions {precision}"] = {"img_per_s": n / seconds, "of_pure_fp32": t_pure / seconds}
    out["regions bf16"].update(region_fidelity(arrays["fp32"], arrays["bf16"]))
    if whole_autocast:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            compute = extract.regions(params, manifest, CPU)  # built fp32, every part run under autocast
            whole, _ = compute(0, entries, lambda k: None)
        out["regions bf16, boxes in bf16 too"] = region_fidelity(arrays["fp32"], whole)
    return out, arrays


def region_clip_row(params: Params, paths: list[Path], regions: dict[str, np.ndarray]) -> dict[str, dict]:
    """CLIP of each region crop (the fp32 boxes) in bf16 against fp32."""
    crops = {}
    for precision in ("fp32", "bf16"):
        clip = load_clip(params.clip, CPU, precision)
        (crops[precision], _), seconds = timed(lambda: encode_region_crops(clip, paths, regions["boxes"],
                                                                          regions["counts"], 0))
        crops[f"{precision} s"] = seconds
    return {"region_clip bf16": {"crops_per_s": int(regions["counts"].sum()) / crops["bf16 s"],
                                 "fp32_crops_per_s": int(regions["counts"].sum()) / crops["fp32 s"],
                                 **cosines(crops["fp32"], crops["bf16"])}}


def knn_row(params: Params, arrays: dict[str, dict]) -> dict[str, dict]:
    """KNN graphs on the bf16 regions: the share of regions with the same neighbours, where the
    image kept its region count."""
    graphs = {p: knn_graphs(a["features"].astype(np.float32), a["boxes"], a["counts"], a["image_sizes"], params.knn)[0]
              for p, a in arrays.items() if p in ("fp32", "bf16")}
    same_count = arrays["fp32"]["counts"] == arrays["bf16"]["counts"]
    real = np.arange(graphs["fp32"].shape[1])[None, :] < arrays["fp32"]["counts"][:, None]
    rows = real & same_count[:, None]
    agree = (np.sort(graphs["fp32"], -1) == np.sort(graphs["bf16"], -1)).all(-1)
    return {"knn on bf16 regions": {"same_neighbours": float(agree[rows].mean())}}


def paper(photos: int, detector_photos: int, folder: Path) -> dict[str, dict]:
    sample = find_real_sample()
    if sample is None:
        raise SystemExit("benchmarks/precision.py: the real photos (../shared/data/real_sample) are absent")
    data = json.loads((sample / "dataset.json").read_text())["images"][:photos]
    manifest = {"image_root": str(sample / "images"),
                "images": [{"id": str(i), "path": f"{e['filepath']}/{e['filename']}", "split": "test", "captions": []}
                           for i, e in enumerate(data)]}
    paths = [sample / "images" / e["path"] for e in manifest["images"]]
    captions = [s["raw"] for e in data for s in e["sentences"]]
    params = paper_params(build_weights(folder / "weights", CAPTIONS * 20), folder)
    out = clip_rows(params, manifest, paths, captions)
    few = {**manifest, "images": manifest["images"][:detector_photos]}
    rows, arrays = region_rows(params, few, paths[:detector_photos], whole_autocast=False)
    return {**out, **rows, **region_clip_row(params, paths[:detector_photos], arrays["fp32"])}


def demo(images: int) -> dict[str, dict]:
    params, manifest = load_params(ROOT / "params.yaml"), load_manifest()
    manifest = {**manifest, "images": manifest["images"][:images]}
    paths = [Path(manifest["image_root"]) / e["path"] for e in manifest["images"]]
    captions = [c for e in manifest["images"] for c in e["captions"]]
    out = clip_rows(params, manifest, paths, captions)
    rows, arrays = region_rows(params, manifest, paths, whole_autocast=True)
    return {**out, **rows, **region_clip_row(params, paths, arrays["fp32"]), **knn_row(params, arrays)}


def print_rows(title: str, rows: dict[str, dict]) -> None:
    print(f"\n{title}")
    for name, figures in rows.items():
        print(f"  {name:<34} " + ", ".join(f"{k} {v:.4g}" for k, v in figures.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=48, help="real photos for CLIP at paper size")
    parser.add_argument("--detector-photos", type=int, default=1,
                        help="real photos for the R50-FPN and region CLIP (bf16 convolutions take minutes a photo "
                             "on a CPU without native bf16)")
    parser.add_argument("--demo-images", type=int, default=200)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    machine = f"CPU, {torch.get_num_threads()} threads, native bf16: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}"
    results = {"machine": machine, "demo": demo(args.demo_images)}
    print_rows(f"demo world, {args.demo_images} images ({machine})", results["demo"])
    with tempfile.TemporaryDirectory(prefix="graphcap-precision-") as tmp:
        results["paper"] = paper(args.photos, args.detector_photos, Path(tmp))
    print_rows(f"paper size, random weights, {args.photos} real photos ({args.detector_photos} for the detector)",
               results["paper"])
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
