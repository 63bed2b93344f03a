"""The paper preset builds the networks as their weights were trained."""
import dataclasses

import numpy as np
import pytest
from open_clip.transformer import QuickGELU
from torch import nn

from features.clip import clip_activation, load_clip
from features.config import ClipConfig
from features.store import StoreError, open_shard, shard_path, write_shard
from pipeline.params import load_params
from pipeline.provenance import expected
from tests.conftest import ROOT


def _activation(clip) -> type:
    return type(clip.model.visual.transformer.resblocks[0].mlp.gelu)


def test_the_presets_clip_is_built_with_quickgelu_as_openai_trained_it():
    preset = load_params(ROOT / "presets/paper.yaml").clip
    assert (preset.model, preset.pretrained) == ("ViT-B-32", "openai")
    assert clip_activation(preset) == "quick_gelu"
    random_weights = dataclasses.replace(preset, pretrained="")  # the architecture only: no download
    assert _activation(load_clip(random_weights, "cpu")) is QuickGELU


@pytest.mark.parametrize("pretrained, activation", [
    ("openai", "quick_gelu"), ("laion2b_s34b_b79k", "gelu"),  # from open_clip's table of tags
    ("weights/a-local-copy.safetensors", "gelu"),  # a local file: the model config's (GELU for ViT-B-32)
])
def test_auto_takes_the_tags_activation(pretrained, activation):
    assert clip_activation(ClipConfig(model="ViT-B-32", pretrained=pretrained)) == activation


def test_an_activation_that_contradicts_the_tag_is_refused():
    with pytest.raises(ValueError, match="clip.activation: gelu contradicts pretrained tag 'openai'"):
        clip_activation(ClipConfig(model="ViT-B-32", pretrained="openai", activation="gelu"))
    gelu = dataclasses.replace(ClipConfig(model="ViT-B-32", pretrained=""), activation="gelu")
    assert _activation(load_clip(gelu, "cpu")) is nn.GELU


def test_features_made_with_the_wrong_activation_are_refused(tmp_path):
    record = expected(load_params(ROOT / "presets/paper.yaml"))["clip_image"]
    assert record["clip.activation"] == "quick_gelu"
    path = shard_path(tmp_path, "clip_image", 0)
    write_shard(path, "clip_image", ["a"], {"embeddings": np.zeros((1, 4), np.float16)},
                {**record, "clip.activation": "gelu"}, first_index=0)
    with pytest.raises(StoreError, match="provenance key 'clip.activation' differs"):
        open_shard(path, "clip_image", record)
