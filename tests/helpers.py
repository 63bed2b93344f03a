"""Helpers the model-level tests share: synthetic feature items and a tiny captioner over the
tiny GPT-2 of the ``tiny_language`` fixture (tests/conftest.py)."""
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from train.config import LossConfig, ModelConfig
from train.data import Batch
from train.losses import total_loss
from train.model import Captioner, FeatureDims, load_gpt2

D_CLIP, D_REGION, SCENES, OBJECTS = 16, 24, 6, 5
# Debian's chromium (`make browser`), which the browser tests drive offline; without it they skip
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def synthetic_items(n=3, seed=0, tokenizer=None) -> list[dict]:
    """``n`` store-like items (4, 1 and 7 regions in turn) with random features and boxes."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        count = [4, 1, 7][i % 3]
        neighbors = np.array([[j for j in range(count) if j != r][:2] + [-1] * (2 - min(2, count - 1)) for r in range(count)])
        item = {
            "clip": rng.normal(size=D_CLIP).astype(np.float32),
            "features": rng.normal(size=(count, D_REGION)).astype(np.float32),
            "scores": rng.uniform(size=count).astype(np.float32),
            "keyword_ids": rng.integers(-1, OBJECTS, size=(count, 2)),
            "keyword_scores": rng.uniform(size=(count, 2)).astype(np.float32),
            "neighbors": neighbors.astype(np.int32), "weights": np.full(neighbors.shape, 0.5, np.float32),
            "text": rng.normal(size=D_CLIP).astype(np.float32), "index": i,
            "boxes": random_boxes(rng, count), "image_size": np.array([128, 128], np.float32),
        }
        if tokenizer is not None:
            item["tokens"] = tokenizer("a red circle on the beach", add_special_tokens=False).input_ids + [
                tokenizer.eos_token_id]
        items.append(item)
    return items


def random_boxes(rng: np.random.Generator, count: int, side: int = 128) -> np.ndarray:
    """(count, 4) boxes (x0, y0, x1, y1) inside a ``side`` × ``side`` image."""
    corner = rng.uniform(0, side * 0.6, size=(count, 2))
    return np.concatenate([corner, corner + rng.uniform(8, side * 0.4, size=(count, 2))], axis=1).astype(np.float32)


def tiny_captioner(tiny_language, **overrides) -> Captioner:
    """A seeded captioner at the synthetic items' dimensions; ``overrides`` are ModelConfig keys."""
    torch.manual_seed(0)
    gpt2, tokenizer = load_gpt2(str(tiny_language))
    cfg = ModelConfig(gpt2=str(tiny_language), gat_hidden=8, gat_heads=2, prefix_length=3, **overrides)
    dims = FeatureDims(clip=D_CLIP, region=D_REGION, scene_bank=SCENES, object_bank=OBJECTS)
    return Captioner(cfg, dims, gpt2, tokenizer, torch.randn(SCENES, D_CLIP), torch.randn(OBJECTS, D_CLIP))


def changed_by_one_step(model: Captioner, batch: Batch) -> set[str]:
    """Names of the parameters one AdamW step on the training loss changes."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    total_loss(model, batch, LossConfig())["total"].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


def project_files(root: Path) -> list[str]:
    """The files git knows in ``root`` (committed or not, ignored ones left out); the calling
    test skips, saying so, outside a git checkout."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, text=True, check=False)
    if listed.returncode:
        pytest.skip("not a git checkout: the tracked files are unknown")
    return [name for name in listed.stdout.split("\0") if name and (root / name).is_file()]
