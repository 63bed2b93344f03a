"""CLIP and detector loading through the real-weights code path, with small models the tests
build and save themselves; extraction on generated and real images."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision.transforms.functional import to_tensor

from features.clip import encode_from_tokens, encode_images, encode_texts, load_clip
from features.config import ClipConfig, DetectorConfig
from features.detection import pad_regions, select_regions
from features.detector_torchvision import build_detector
from features.detectors import detect_regions, load_detector
from features.images import ImageError, load_rgb
from tests.conftest import REAL_SAMPLE

CLASSES = ["__background__", "circle", "square"]


def _images(tmp_path, n=3):
    paths = []
    for i in range(n):
        image = Image.new("RGB", (96 + 16 * i, 80), (40 * i, 100, 200))
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    return paths


def test_clip_loads_local_weights_and_embeds(tiny_clip, tmp_path):
    cfg, reference = tiny_clip
    clip = load_clip(cfg, torch.device("cpu"))
    assert clip.dim == 24
    for a, b in zip(clip.model.state_dict().values(), reference.state_dict().values()):
        torch.testing.assert_close(a, b)  # the file's weights, not a fresh initialisation
    paths = _images(tmp_path)
    arrays, errors = encode_images(clip, paths, batch_size=2, num_workers=0, with_tokens=True)
    alone, _ = encode_images(clip, paths[1:2], batch_size=1, num_workers=0)
    assert not errors and "tokens" not in alone
    images = arrays["embeddings"]
    np.testing.assert_allclose(images[1], alone["embeddings"][0], atol=1e-5)  # batching does not change results
    # the cached tokens entering the last two blocks reproduce the embedding exactly
    assert arrays["tokens"].shape == (3, 1 + (64 // 16) ** 2, 32)
    with torch.no_grad():
        again = encode_from_tokens(clip.model.visual, torch.from_numpy(arrays["tokens"]))
    np.testing.assert_allclose(again.numpy(), images, atol=1e-5)
    texts = encode_texts(clip, ["a red circle", "a blue square", "a red circle"], batch_size=2)
    assert texts.shape == (3, 24) and np.allclose(texts[0], texts[2], atol=1e-5) and not np.allclose(texts[0], texts[1], atol=1e-2)
    assert cfg.identity()["clip.weights"].startswith("sha256:")


def test_clip_config_mismatch_is_named(tiny_clip):
    cfg, _ = tiny_clip
    with pytest.raises(ValueError, match="clip.model is 'other'"):
        load_clip(ClipConfig(model="other", pretrained=cfg.pretrained, config_file=cfg.config_file),
                  torch.device("cpu"))


@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory):
    folder = tmp_path_factory.mktemp("det")
    cfg = DetectorConfig(arch="demo_tiny", min_size=96, max_size=128, anchor_sizes=[[16, 32]],
                         box_score_thresh=0.0, max_regions=6, rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20)
    torch.manual_seed(0)
    save_file(build_detector(cfg, len(CLASSES)).state_dict(), str(folder / "det.safetensors"))
    (folder / "classes.json").write_text(json.dumps(CLASSES))
    return DetectorConfig(**{**cfg.__dict__, "weights": str(folder / "det.safetensors"),
                             "classes": str(folder / "classes.json")})


def test_detector_regions_belong_to_final_boxes(tiny_detector, tmp_path):
    model, names = load_detector(tiny_detector, torch.device("cpu"))
    assert names == CLASSES
    images = [to_tensor(load_rgb(p)) for p in _images(tmp_path)]
    regions = detect_regions(model, images, tiny_detector)
    for r, image in zip(regions, images):
        assert 1 <= len(r.features) <= 6 and r.features.shape[1] == 256
        assert len(r.boxes) == len(r.scores) == len(r.labels) == len(r.features)
        h, w = image.shape[-2:]
        assert (r.boxes[:, 2] <= w + 1e-3).all() and (r.boxes[:, 3] <= h + 1e-3).all()
    arrays = pad_regions(regions + [None], n_max=6, dim=256)
    assert arrays["features"].shape == (4, 6, 256) and arrays["features"].dtype == np.float16
    assert (arrays["features"][0, arrays["counts"][0]:] == 0).all()
    assert arrays["counts"][3] == 0 and np.isnan(arrays["features"][3]).all()  # a rejected image: NaN, not zeros


def test_no_detection_falls_back_to_the_whole_image(tiny_detector, tmp_path):
    cfg = DetectorConfig(**{**tiny_detector.__dict__, "box_score_thresh": 1.01})  # nothing passes
    model, _ = load_detector(cfg, torch.device("cpu"))
    (r,) = detect_regions(model, [to_tensor(load_rgb(_images(tmp_path, 1)[0]))], cfg)
    assert r.boxes.tolist() == [[0, 0, 96, 80]] and r.scores.tolist() == [0] and r.labels.tolist() == [0]


def test_class_agnostic_nms_keeps_one_region_per_object():
    """The detector suppresses overlaps per class, so one object can come back as a circle and as
    a square; class_agnostic_nms keeps the better of the two, and the threshold and the top-up
    still apply to what is left, best first."""
    scores = torch.tensor([0.9, 0.8, 0.6, 0.3, 0.1])  # sorted, as the detectors return them
    boxes = torch.tensor([[0, 0, 20, 20], [1, 0, 21, 20], [50, 50, 70, 70], [51, 50, 70, 71], [90, 90, 99, 99]],
                         dtype=torch.float)  # 0/1 and 2/3: the same object twice
    per_class = DetectorConfig(box_score_thresh=0.2)
    assert select_regions(scores, boxes, per_class).tolist() == [0, 1, 2, 3]
    agnostic = DetectorConfig(box_score_thresh=0.2, class_agnostic_nms=0.5)
    assert select_regions(scores, boxes, agnostic).tolist() == [0, 2]
    topped_up = DetectorConfig(box_score_thresh=0.95, class_agnostic_nms=0.5, min_regions=3)
    assert select_regions(scores, boxes, topped_up).tolist() == [0, 2, 4]


def test_missing_weights_and_unknown_arch_are_named(tiny_detector):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_detector(DetectorConfig(**{**tiny_detector.__dict__, "weights": "nope.safetensors"}), torch.device("cpu"))
    with pytest.raises(KeyError, match="regions.arch"):
        build_detector(DetectorConfig(arch="yolo"), 3)


def test_unreadable_image_is_named(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageError, match="broken.jpg"):
        load_rgb(bad)


@pytest.mark.skipif(not REAL_SAMPLE.exists(), reason=f"real sample data not present at {REAL_SAMPLE}")
def test_real_jpegs_run_through_both_extractors(tiny_clip, tiny_detector):
    paths = sorted((REAL_SAMPLE / "images").rglob("*.jpg"))[:3]
    clip = load_clip(tiny_clip[0], torch.device("cpu"))
    assert np.isfinite(encode_images(clip, paths, batch_size=3, num_workers=0)[0]["embeddings"]).all()
    model, _ = load_detector(tiny_detector, torch.device("cpu"))
    for path, r in zip(paths, detect_regions(model, [to_tensor(load_rgb(p)) for p in paths], tiny_detector)):
        w, h = Image.open(path).size
        assert (r.boxes[:, 2] <= w + 1e-3).all() and np.isfinite(r.features).all()
