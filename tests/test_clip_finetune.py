"""Fine-tuning CLIP's last two vision blocks from the cached tokens entering them (docs/method.md §8,
phase 2): the tail reproduces CLIP, trains only in phase 2, and survives save/load."""
import copy

import numpy as np
import pytest
import torch
import yaml
from open_clip.transformer import QuickGELU

from features.clip import ClipTail, build_tail, encode_images, load_clip, tail_spec
from pipeline.params import ParamsError, load_params
from tests.conftest import ROOT
from tests.helpers import OBJECTS, SCENES, changed_by_one_step, synthetic_items
from tests.test_features import _images
from train.config import ModelConfig
from train.data import collate
from train.model import Captioner, FeatureDims, load_captioner, load_gpt2
from train.trainer import Phase, set_phase


@pytest.fixture(scope="module")
def clip(tiny_clip):
    return load_clip(tiny_clip[0], torch.device("cpu"))


def _captioner(clip, language) -> Captioner:
    torch.manual_seed(0)
    gpt2, tokenizer = load_gpt2(str(language))
    cfg = ModelConfig(gpt2=str(language), gat_hidden=8, gat_heads=2, prefix_length=3, finetune_clip=True)
    dims = FeatureDims(clip=clip.dim, region=24, scene_bank=SCENES, object_bank=OBJECTS)
    return Captioner(cfg, dims, gpt2, tokenizer, torch.randn(SCENES, clip.dim), torch.randn(OBJECTS, clip.dim),
                     copy.deepcopy(ClipTail(clip.model.visual)))


def _batch(model, clip, tmp_path):
    arrays, _ = encode_images(clip, _images(tmp_path), batch_size=3, num_workers=0, with_tokens=True)
    items = synthetic_items(n=3, tokenizer=model.tokenizer)
    for item, tokens, embedding in zip(items, arrays["tokens"], arrays["embeddings"]):
        item.update(clip_tokens=tokens, clip=embedding, text=embedding[::-1].copy())
    return collate(items, pad_id=model.tokenizer.pad_token_id), arrays["embeddings"]


def test_tail_trains_in_phase_two_only(clip, tiny_language, tmp_path):
    model = _captioner(clip, tiny_language)
    batch, embeddings = _batch(model, clip, tmp_path)
    assert batch.clip_tokens.shape == (3, 17, 32)
    with torch.no_grad():  # before training, the tail is CLIP: it recomputes the cached embeddings
        np.testing.assert_allclose(model.clip_tail(batch.clip_tokens).numpy(), embeddings, atol=1e-5)
    tail = {n for n, _ in model.named_parameters() if n.startswith("clip_tail.")}
    assert any(".blocks.1." in n for n in tail) and "clip_tail.proj" in tail
    for phase in (Phase.MAPPING, Phase.FULL):
        set_phase(model, phase)
        changed = changed_by_one_step(model, batch)
        assert (changed & tail == set()) if phase is Phase.MAPPING else tail <= changed
    assert not torch.equal(model.clip_tail.proj, clip.model.visual.proj)  # a copy: the extractor is untouched


def test_saved_model_rebuilds_its_tail(clip, tiny_language, tmp_path):
    model = _captioner(clip, tiny_language).eval()
    with torch.no_grad():
        model.clip_tail.proj.mul_(2)  # weights that differ from any fresh CLIP
    batch, _ = _batch(model, clip, tmp_path)
    model.save(tmp_path / "captioner", extra={"clip_tail": tail_spec(clip)})
    loaded, _ = load_captioner(tmp_path / "captioner")
    torch.testing.assert_close(loaded.prefix(batch).embeddings, model.prefix(batch).embeddings)
    # OpenAI's weights need QuickGELU: the spec records the activation the extractor used
    assert isinstance(build_tail({**tail_spec(clip), "quick_gelu": True}).blocks[0].mlp.gelu, QuickGELU)
    assert not isinstance(build_tail(tail_spec(clip)).blocks[0].mlp.gelu, QuickGELU)


def test_finetuning_needs_cached_tokens(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"]["finetune_clip"] = True
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match="clip.cache_tokens"):
        load_params(tmp_path / "params.yaml")
    params["clip"]["cache_tokens"] = True
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert load_params(tmp_path / "params.yaml").model.finetune_clip
