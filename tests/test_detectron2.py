"""The detectron2 backend gives the torchvision backend's schema. detectron2 has no PyPI wheel, so
these tests run only where it was installed from source; elsewhere they skip, saying so."""
import json

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision.transforms.functional import to_tensor

pytest.importorskip("detectron2", reason="detectron2 is not installed (no PyPI wheel; build it from its source)")

from features.config import DetectorConfig  # noqa: E402
from features.detection import pad_regions  # noqa: E402
from features.detector_detectron2 import build_detectron2  # noqa: E402
from features.detector_torchvision import build_detector  # noqa: E402
from features.detectors import detect_regions, load_detector  # noqa: E402

CLASSES = ["__background__", "circle", "square", "triangle"]


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("d2")
    (folder / "classes.json").write_text(json.dumps(CLASSES))
    common = dict(classes=str(folder / "classes.json"), min_size=160, max_size=200, box_score_thresh=0.0,
                  min_regions=3, max_regions=8, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50)
    d2 = DetectorConfig(backend="detectron2", d2_config="COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml",
                        weights=str(folder / "d2.safetensors"), **common)
    tv = DetectorConfig(arch="fasterrcnn_resnet50_fpn", weights=str(folder / "tv.safetensors"), **common)
    torch.manual_seed(0)
    model = build_detectron2(d2, len(CLASSES))
    with torch.no_grad():  # random ResNet features reach ~1e4 and saturate every score: damp the FPN outputs
        for name, module in model.backbone.named_modules():
            if name.startswith("fpn_output"):
                module.weight.mul_(1e-3)
    save_file(model.state_dict(), d2.weights)
    save_file(build_detector(tv, len(CLASSES)).state_dict(), tv.weights)
    return d2, tv


def test_both_backends_fill_the_same_schema(configs):
    images = [to_tensor(Image.new("RGB", (120 + 40 * i, 90), (30 * i, 120, 200))) for i in range(2)]
    arrays = {}
    for cfg in configs:
        model, names = load_detector(cfg, torch.device("cpu"))
        assert names == CLASSES
        regions = detect_regions(model, images, cfg)
        for r, image in zip(regions, images):
            assert 3 <= len(r.features) <= 8 and r.features.shape[1] == 1024
            assert (r.boxes[:, 2] <= image.shape[-1] + 1e-3).all() and (r.boxes[:, 3] <= image.shape[-2] + 1e-3).all()
            assert ((0 <= r.labels) & (r.labels < len(CLASSES))).all()
        arrays[cfg.backend] = pad_regions(regions, 8, 1024)
    d2, tv = arrays["detectron2"], arrays["torchvision"]
    assert {k: (v.shape, v.dtype) for k, v in d2.items()} == {k: (v.shape, v.dtype) for k, v in tv.items()}


def test_pickled_checkpoints_are_refused(configs, tmp_path):
    d2, _ = configs
    (tmp_path / "model_final.pkl").write_bytes(b"\x80\x04")
    cfg = DetectorConfig(**{**d2.__dict__, "weights": str(tmp_path / "model_final.pkl")})
    with pytest.raises(ValueError, match="pickled detectron2 checkpoints are not loaded"):
        load_detector(cfg, torch.device("cpu"))
