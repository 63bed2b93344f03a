"""Shared fixtures: small models and data the tests build themselves."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tools.paper_check import find_real_sample

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(2)

ROOT = Path(__file__).resolve().parents[1]
# The 48 real photos live outside the project (never copied in); found as make paper-check finds
# them. Where they are absent, the tests that need them skip, naming this path.
REAL_SAMPLE = find_real_sample() or ROOT.parent / "shared" / "data" / "real_sample"


def real_photos() -> list[Path]:
    """The real photos in their dataset.json's order; the test calling this skips where they are absent."""
    if not (REAL_SAMPLE / "dataset.json").is_file():
        pytest.skip(f"no real photos at {REAL_SAMPLE} (the shared real_sample folder is absent)")
    entries = json.loads((REAL_SAMPLE / "dataset.json").read_text())["images"]
    return [REAL_SAMPLE / "images" / e["filepath"] / e["filename"] for e in entries]


@pytest.fixture(scope="session")
def tiny_language(tmp_path_factory):
    """A tokenizer trained with `tokenizers` and a random 1-layer GPT-2, saved as a folder."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from tools.demo_encoders.language import train_tokenizer

    folder = tmp_path_factory.mktemp("gpt2")
    captions = ["a red circle on the beach", "a blue square in the snow", "two shapes in the city",
                "a small green triangle to the left of a large purple star in the forest"] * 5
    tokenizer = train_tokenizer(captions, vocab_size=300)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=1, n_head=2,
                                       eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id))
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A 2-block open_clip model (64 px, width 32, d = 24) with its own tokenizer, saved as files:
    (its ClipConfig, the model)."""
    import json

    import open_clip
    from safetensors.torch import save_file

    from features.config import ClipConfig
    from tools.demo_encoders.clip import clip_config
    from tools.demo_encoders.language import train_tokenizer

    folder = tmp_path_factory.mktemp("clip")
    tokenizer = train_tokenizer(["a red circle", "a blue square on the beach"] * 4, vocab_size=280)
    tokenizer.save_pretrained(folder / "tok")
    config = clip_config(len(tokenizer), tokenizer.eos_token_id)
    config["vision_cfg"].update(layers=2, width=32, head_width=16, image_size=64)
    config["text_cfg"].update(layers=1, width=32, heads=2)
    config["embed_dim"] = 24
    (folder / "test-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder / "test-clip.json")
    torch.manual_seed(0)
    model = open_clip.create_model("test-clip")
    save_file(model.state_dict(), str(folder / "test-clip.safetensors"))
    return ClipConfig(model="test-clip", pretrained=str(folder / "test-clip.safetensors"),
                      config_file=str(folder / "test-clip.json"), tokenizer=str(folder / "tok")), model


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A 12-image world run through every stage (one short epoch per phase, greedy decoding): the
    trained model folder, its release and the store that `graphcap-caption`, the Python API and
    `graphcap-demo` are tested with."""
    from pipeline.stages import (
        clip_image,
        clip_text,
        evaluate,
        knn,
        prepare,
        region_clip,
        region_keywords,
        regions,
        release,
        train,
        world,
    )

    stages = (world, prepare, clip_image, regions, clip_text, knn, region_keywords, region_clip, train, evaluate,
              release)
    return tiny_project(tmp_path_factory.mktemp("caption"), stages, n_train=8,
                        train={"phase1_epochs": 1, "phase2_epochs": 1, "batch_size": 8, "val_images": 0},
                        evaluate={"decode": {"method": "greedy"}})


def tiny_project(folder: Path, stages=(), n_train: int = 6, **sections: dict) -> Path:
    """A working folder with the demo parameters shrunk to ``n_train`` + 2 + 2 images in shards
    of 4 (``sections`` update further params.yaml sections), with ``stages`` run in it."""
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["world"].update(n_train=n_train, n_val=2, n_test=2)
    params["store"].update(shard_size=4, num_workers=0)
    _merge(params, sections)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    (folder / "assets").symlink_to(ROOT / "assets")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setattr("sys.argv", ["stage"])
        for stage in stages:
            stage.main()
    return folder


def _merge(into: dict, updates: dict) -> None:
    for key, value in updates.items():
        if isinstance(value, dict):
            _merge(into[key], value)
        else:
            into[key] = value
