"""Paper-size check of the captioner: d = 512, regions D = 1024 (R50-FPN box head), GPT-2 small
dimensions (12 layers, h = 768, vocabulary 50,257) with random weights; a training step and a
decode on CPU."""
import numpy as np
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from tests.conftest import ROOT
from tests.helpers import random_boxes
from train.config import DecodeConfig, LossConfig, ModelConfig
from train.data import collate
from train.decode import decode
from train.losses import total_loss
from train.model import Captioner, FeatureDims


def test_paper_size_step_and_decode():
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(ROOT / "assets/demo/gpt2")  # any tokenizer: ids < 50,257
    gpt2 = GPT2LMHeadModel(GPT2Config(eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id))
    assert (gpt2.config.n_layer, gpt2.config.n_embd, gpt2.config.vocab_size) == (12, 768, 50257)
    dims = FeatureDims(clip=512, region=1024, scene_bank=512, object_bank=91)
    model = Captioner(ModelConfig(gat_hidden=128, gat_heads=4), dims, gpt2, tokenizer,
                      torch.randn(512, 512), torch.randn(91, 512))
    rng = np.random.default_rng(0)
    items = []
    for count in (36, 12):
        neighbors = np.stack([np.roll(np.arange(count), -s)[:5] for s in range(1, count + 1)]).astype(np.int32)
        items.append({
            "clip": rng.normal(size=512).astype(np.float32), "features": rng.normal(size=(count, 1024)).astype(np.float32),
            "neighbors": neighbors, "weights": np.full((count, 5), 0.5, np.float32),
            "keyword_ids": rng.integers(-1, 91, size=(count, 1)), "keyword_scores": np.ones((count, 1), np.float32),
            "text": rng.normal(size=512).astype(np.float32), "index": 0,
            "boxes": random_boxes(rng, count, 640), "image_size": np.array([480, 640], np.float32),
            "tokens": tokenizer("a red circle on the beach", add_special_tokens=False).input_ids + [tokenizer.eos_token_id],
        })
    batch = collate(items, pad_id=tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss = total_loss(model, batch, LossConfig())["total"]
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    model.eval()
    captions = decode(model, batch, DecodeConfig(method="hybrid", beam_size=5, greedy_tokens=2, max_tokens=5))
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
