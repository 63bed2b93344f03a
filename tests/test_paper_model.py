"""Paper-size check of the captioner as presets/paper.yaml builds it: d = 512, regions D = 2048
(C5 features) through the 2048 → 512 adapter, CLIP ViT-B/32's last two blocks fine-tuned, GPT-2
small dimensions (12 layers, h = 768, vocabulary 50,257), all with random weights; a phase-2
training step and a decode on CPU."""
import dataclasses

import numpy as np
import open_clip
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from features.clip import ClipTail
from pipeline.params import load_params
from tests.conftest import ROOT
from tests.helpers import random_boxes
from train.config import DecodeConfig, LossConfig
from train.data import collate
from train.decode import decode
from train.losses import total_loss
from train.model import Captioner, FeatureDims
from train.trainer import set_phase


def test_paper_size_step_and_decode():
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(ROOT / "assets/demo/gpt2")  # any tokenizer: ids < 50,257
    gpt2 = GPT2LMHeadModel(GPT2Config(eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id))
    assert (gpt2.config.n_layer, gpt2.config.n_embd, gpt2.config.vocab_size) == (12, 768, 50257)
    cfg = dataclasses.replace(load_params(ROOT / "presets/paper.yaml").model, gpt2="")
    assert cfg.region_adapter and cfg.finetune_clip and (cfg.gat_hidden, cfg.gat_heads) == (128, 4)
    visual = open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True).visual
    dims = FeatureDims(clip=512, region=2048, scene_bank=512, object_bank=91)
    model = Captioner(cfg, dims, gpt2, tokenizer, torch.randn(512, 512), torch.randn(91, 512), ClipTail(visual))
    assert (model.adapter.in_features, model.adapter.out_features) == (2048, 512)
    rng = np.random.default_rng(0)
    items = []
    for count in (36, 12):
        neighbors = np.stack([np.roll(np.arange(count), -s)[:5] for s in range(1, count + 1)]).astype(np.int32)
        items.append({
            "clip": rng.normal(size=512).astype(np.float32), "features": rng.normal(size=(count, 2048)).astype(np.float32),
            "clip_tokens": rng.normal(size=(50, 768)).astype(np.float32),  # entering CLIP's last two blocks
            "neighbors": neighbors, "weights": np.full((count, 5), 0.5, np.float32),
            "keyword_ids": rng.integers(-1, 91, size=(count, 1)), "keyword_scores": np.ones((count, 1), np.float32),
            "text": rng.normal(size=512).astype(np.float32), "index": 0,
            "boxes": random_boxes(rng, count, 640), "image_size": np.array([480, 640], np.float32),
            "tokens": tokenizer("a red circle on the beach", add_special_tokens=False).input_ids + [tokenizer.eos_token_id],
        })
    batch = collate(items, pad_id=tokenizer.pad_token_id)
    set_phase(model, 2)
    block = model.clip_tail.blocks[0].mlp.c_fc.weight.detach().clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss = total_loss(model, batch, LossConfig())["total"]
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(model.clip_tail.blocks[0].mlp.c_fc.weight, block)
    model.eval()
    captions = decode(model, batch, DecodeConfig(method="hybrid", beam_size=5, greedy_tokens=2, max_tokens=5))
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
