"""store.precision: the extractors under bf16 autocast give features close to fp32 (bounds from
the measurement in docs/benchmarks.md#precision, loosened for a handful of images), the precision
is in every kind's provenance so two precisions never mix, fp16 is refused off CUDA by name, and
`graphcap-caption --precision` runs the extractors and decoding at another precision."""
import dataclasses

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou
from torchvision.transforms.functional import to_tensor

from features.clip import encode_images, encode_texts, load_clip
from features.detectors import detect_regions, load_detector
from features.images import load_rgb
from features.precision import Autocast, check_precision, run_parts_at
from features.store import StoreError
from pipeline import caption
from pipeline.params import load_params
from pipeline.provenance import expected
from tests.conftest import ROOT, tiny_project


@pytest.fixture(scope="module")
def world_images(tmp_path_factory) -> list:
    from pipeline.stages import world

    folder = tiny_project(tmp_path_factory.mktemp("precision"), (world,), n_train=12)
    return sorted((folder / "data/world/images").glob("*.png"))


def with_precision(params, precision: str):
    return dataclasses.replace(params, store=dataclasses.replace(params.store, precision=precision))


def cosine(a: np.ndarray, b: np.ndarray) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(torch.tensor(a), torch.tensor(b), dim=-1)


def test_fp16_off_cuda_and_unknown_precisions_are_refused_by_name():
    with pytest.raises(ValueError, match="store.precision: fp16 runs on CUDA only, not on cpu; use bf16 or fp32"):
        check_precision("fp16", "cpu")
    with pytest.raises(ValueError, match=r"train.precision: unknown 'fp8' \(fp32 \| bf16 \| fp16\)"):
        check_precision("fp8", "cpu", key="train.precision")
    params = load_params(ROOT / "params.yaml")
    with pytest.raises(ValueError, match="store.precision: fp16 runs on CUDA only"):
        load_clip(params.clip, torch.device("cpu"), "fp16")


def test_bf16_clip_embeddings_are_close_to_fp32(world_images):
    params = load_params(ROOT / "params.yaml")  # the demo's trained CLIP
    texts = ["a small red circle above a large blue square on the beach", "two triangles in the snow"]
    out = {}
    for precision in ("fp32", "bf16"):
        clip = load_clip(params.clip, torch.device("cpu"), precision)
        out[precision] = (encode_images(clip, world_images, 8, 0)[0]["embeddings"], encode_texts(clip, texts, 8))
    assert not np.array_equal(out["fp32"][0], out["bf16"][0])  # bf16 really ran
    assert cosine(out["fp32"][0], out["bf16"][0]).min() >= 0.999  # measured: ≥ 0.99992 over 200 demo images
    assert cosine(out["fp32"][1], out["bf16"][1]).min() >= 0.999  # measured: ≥ 0.99998 over 500 captions


def test_bf16_detector_keeps_the_boxes(world_images):
    params = load_params(ROOT / "params.yaml")
    images = [to_tensor(load_rgb(p)) for p in world_images]
    found = {}
    for precision in ("fp32", "bf16"):
        detector, _ = load_detector(params.regions, torch.device("cpu"), precision)
        found[precision] = detect_regions(detector, images, params.regions)
    same_count, ious, feature_cos = 0, [], []
    for a, b in zip(found["fp32"], found["bf16"]):
        same_count += len(a.boxes) == len(b.boxes)
        best, match = box_iou(torch.tensor(a.boxes), torch.tensor(b.boxes)).max(dim=1)
        ious += best.tolist()
        feature_cos += cosine(a.features, b.features[match.numpy()]).tolist()
        assert a.boxes.dtype == np.float32 and a.scores.dtype == np.float32
    # measured over 200 demo images: counts equal in 199, mean IoU 0.9975, feature cosine 0.9999
    assert same_count >= 0.8 * len(images)
    assert np.mean(ious) >= 0.98 and np.mean(feature_cos) >= 0.995


def test_the_wrapped_parts_keep_their_attributes_and_return_float32():
    conv = torch.nn.Conv2d(3, 4, 3)
    conv.size_divisibility = 32  # as a detectron2 backbone has
    model = run_parts_at(torch.nn.Sequential(conv), ["0"], "bf16", "cpu")
    assert isinstance(model[0], Autocast) and model[0].size_divisibility == 32
    assert model(torch.rand(1, 3, 8, 8)).dtype == torch.float32
    assert run_parts_at(torch.nn.Sequential(torch.nn.ReLU()), ["0"], "fp32", "cpu")[0].__class__ is torch.nn.ReLU


def test_every_feature_kind_records_its_precision():
    params = load_params(ROOT / "params.yaml")
    fp32, bf16 = expected(params), expected(with_precision(params, "bf16"))
    for kind in fp32:
        assert fp32[kind]["store.precision"] == "fp32" and bf16[kind]["store.precision"] == "bf16", kind


def test_a_stage_refuses_upstream_features_of_another_precision(tmp_path, monkeypatch):
    import yaml

    from pipeline.stages import knn, prepare, regions, world

    folder = tiny_project(tmp_path, (world, prepare, regions), n_train=2)
    raw = yaml.safe_load((folder / "params.yaml").read_text())
    raw["store"]["precision"] = "bf16"
    (folder / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(folder)
    monkeypatch.setattr("sys.argv", ["knn"])
    with pytest.raises(StoreError, match="provenance key 'store.precision' differs: stored 'fp32', expected 'bf16'"):
        knn.main()


def test_caption_at_another_precision(trained, monkeypatch, capsys):
    monkeypatch.chdir(trained)
    photo = trained / "data/world/images/000000.png"
    params = load_params(trained / "params.yaml")
    with pytest.raises(StoreError, match="'store.precision' differs: stored 'fp32', expected 'bf16'"):
        caption.caption_files([photo], trained / "models/captioner", with_precision(params, "bf16"), "cpu")
    assert caption.main([str(photo), "--precision", "bf16"]) == 0  # asked for: the model's record is not held to it
    assert capsys.readouterr().out.startswith(f"{photo}\t")
    assert caption.main([str(photo), "--precision", "fp16"]) == 2  # one line, no traceback
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "graphcap-caption: ValueError: store.precision: fp16 runs on CUDA only, not on cpu; use bf16 or fp32")
