"""A tiny open_clip CLIP, trained contrastively on the world's (image, caption) pairs."""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

log = logging.getLogger(__name__)

NAME = "demo-tiny-clip"


def clip_config(vocab_size: int, eos_id: int) -> dict:
    """An open_clip model config (the format of open_clip's model_configs/*.json)."""
    return {
        "embed_dim": 128,
        "vision_cfg": {"image_size": 128, "layers": 4, "width": 128, "head_width": 32, "patch_size": 16, "mlp_ratio": 2.0},
        "text_cfg": {"context_length": 32, "vocab_size": vocab_size, "width": 128, "heads": 4, "layers": 2,
                     "mlp_ratio": 2.0, "pool_type": "eos", "eos_id": eos_id},
    }


def train_clip(config_path: Path, tokenizer_dir: Path, images: torch.Tensor, captions: list[list[str]],
               epochs: int, seed: int) -> open_clip.CLIP:
    """``images``: (n, 3, 128, 128) already CLIP-preprocessed; ``captions``: 5 per image."""
    torch.manual_seed(seed)
    open_clip.add_model_config(config_path)
    model = open_clip.create_model(NAME)
    tokenizer = open_clip.tokenizer.HFTokenizer(str(tokenizer_dir), context_length=32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    steps = epochs * (len(images) // 128)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    rng = random.Random(seed)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(images))
        for start in range(0, len(order) - 127, 128):
            idx = order[start:start + 128]
            text = tokenizer([rng.choice(captions[i]) for i in idx.tolist()])
            image_f = F.normalize(model.encode_image(images[idx]), dim=-1)
            text_f = F.normalize(model.encode_text(text), dim=-1)
            logits = model.logit_scale.exp() * image_f @ text_f.T
            target = torch.arange(len(idx))
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        log.info("clip epoch %d: loss %.3f", epoch, loss.item())
    return model.eval()


@torch.no_grad()
def retrieval_recall_at_1(model: open_clip.CLIP, tokenizer_dir: Path, images: torch.Tensor, captions: list[str]) -> float:
    """Image→caption R@1 over a held-out set (one caption per image)."""
    tokenizer = open_clip.tokenizer.HFTokenizer(str(tokenizer_dir), context_length=32)
    image_f = F.normalize(model.encode_image(images), dim=-1)
    text_f = F.normalize(model.encode_text(tokenizer(captions)), dim=-1)
    return (image_f @ text_f.T).argmax(1).eq(torch.arange(len(images))).float().mean().item()


def save_clip(model: open_clip.CLIP, weights_path: Path) -> None:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights_path))


def write_config(path: Path, vocab_size: int, eos_id: int) -> None:
    path.write_text(json.dumps(clip_config(vocab_size, eos_id), indent=2) + "\n")
