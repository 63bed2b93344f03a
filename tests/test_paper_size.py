"""Paper-size check: ViT-B/32 and R50-FPN with random weights (the real dimensions), saved as local
files and run through every feature stage on a couple of images."""
import sys

import numpy as np
import open_clip
import pytest
import torch
import yaml
from safetensors.torch import save_file
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from features.store import FeatureReader
from pipeline.stages import clip_image, clip_text, knn, prepare, regions, world
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def paper_project(tmp_path_factory):
    project = tmp_path_factory.mktemp("paper")
    torch.manual_seed(0)
    save_file(open_clip.create_model("ViT-B-32").state_dict(), str(project / "vit-b-32.safetensors"))
    torch.save(fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict(), project / "r50fpn.pth")
    params = yaml.safe_load((ROOT / "presets/paper.yaml").read_text())
    demo = yaml.safe_load((ROOT / "params.yaml").read_text())  # a real data set's preset has no world section
    params["world"] = {**demo["world"], "n_train": 1, "n_val": 0, "n_test": 1}
    params["data"].update(dataset="data/world/dataset.json", image_root="data/world")
    params["store"].update(num_workers=0, shard_size=1)
    params["clip"].update(pretrained=str(project / "vit-b-32.safetensors"), cache_tokens=True)
    params["regions"].update(weights=str(project / "r50fpn.pth"), classes=str(ROOT / "assets/coco_classes.json"),
                             batch_size=2)
    params["keywords"]["min_count"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    return project


def test_paper_size_models_run_every_feature_stage(paper_project, monkeypatch):
    monkeypatch.chdir(paper_project)
    monkeypatch.setattr(sys, "argv", ["stage"])
    for stage in (world, prepare, clip_image, regions, clip_text, knn):
        stage.main()
    store = paper_project / "data/features"
    embeddings = FeatureReader(store, "clip_image", 1, 2, {}).row(1, "embeddings")
    assert embeddings.shape == (512,) and np.isfinite(embeddings).all()  # d = 512
    tokens = FeatureReader(store, "clip_image", 1, 2, {}).row(1, "tokens")
    assert tokens.shape == (50, 768) and tokens.dtype == np.float16  # entering the last two blocks
    reader = FeatureReader(store, "regions", 1, 2, {})
    count = int(reader.row(0, "counts"))
    assert 1 <= count <= 36 and reader.row(0, "features").shape == (36, 2048)  # R50-FPN C5, RoIAlign-pooled
    neighbors = FeatureReader(store, "knn", 1, 2, {}).row(0, "neighbors")
    assert neighbors.shape == (36, 5) and (neighbors[:count] < count).all()
    assert FeatureReader(store, "clip_text", 1, 2, {}).captions([0])[0].shape == (5, 512)
