"""The related captioners over the same cache: keyword-only generation (with CLIP re-ranking of
the final beams) and the two-stage semi-supervised captioner (SCST with a CLIP reward)."""
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import D_CLIP, D_REGION, OBJECTS, SCENES, changed_by_one_step, synthetic_items, tiny_captioner
from train.config import DecodeConfig, ModelConfig, TrainConfig
from train.data import collate, labelled_split
from train.decode import decode, sample, search, texts_of
from train.model import Captioner, FeatureDims, load_captioner, load_gpt2
from train.scst import ClipReward, SelfCritical, caption_mask
from train.trainer import SelfCriticalStage, check_mode, train

KEYWORDS = 7
_NO_IMAGE_BRANCH = dict(regions=False, gat=False, global_guidance=False, local_guidance=False)


def _keyword_model(tiny_language, top_k=3, **overrides) -> Captioner:
    torch.manual_seed(0)
    gpt2, tokenizer = load_gpt2(str(tiny_language))
    cfg = ModelConfig(gpt2=str(tiny_language), prefix_length=3, condition="keywords", keyword_top_k=top_k,
                      **{**_NO_IMAGE_BRANCH, **overrides})
    dims = FeatureDims(clip=D_CLIP, region=D_REGION, scene_bank=SCENES, object_bank=OBJECTS, keyword_bank=KEYWORDS)
    return Captioner(cfg, dims, gpt2, tokenizer, torch.randn(SCENES, D_CLIP), torch.randn(OBJECTS, D_CLIP),
                     keyword_bank=torch.randn(KEYWORDS, D_CLIP))


def _batch(model: Captioner, n: int = 3) -> dict:
    return collate(synthetic_items(n=n, tokenizer=model.tokenizer), pad_id=model.tokenizer.pad_token_id)


def test_keyword_only_model_sees_the_image_only_through_its_top_k_keywords(tiny_language):
    model = _keyword_model(tiny_language).eval()
    batch = _batch(model)
    prefix = model.prefix(batch)
    similarity = F.normalize(batch.clip, dim=-1) @ F.normalize(model.keyword_bank, dim=-1).T
    assert prefix.keyword_ids.tolist() == similarity.argsort(dim=-1, descending=True)[:, :3].tolist()
    assert prefix.embeddings.shape == (3, 3, model.gpt2.config.n_embd)
    # the same keywords (a rescaled image embedding) and no usable regions: the very same prefix
    same = replace(batch, clip=batch.clip * 5, region_features=torch.full_like(batch.region_features, float("nan")))
    torch.testing.assert_close(model.prefix(same).embeddings, prefix.embeddings)
    # an image embedding equal to a keyword's picks that keyword first
    assert model.prefix(replace(batch, clip=model.keyword_bank[[4, 0, 2]])).keyword_ids[:, 0].tolist() == [4, 0, 2]
    changed = changed_by_one_step(model.train(), batch)  # the choice is not trainable: mapper and GPT-2 are
    assert changed and all(n.startswith(("mapping.", "gpt2.")) for n in changed)


def test_keyword_only_model_saves_its_bank_and_refuses_an_image_branch(tiny_language, tmp_path):
    model = _keyword_model(tiny_language)
    model.save(tmp_path / "m")
    loaded, _ = load_captioner(tmp_path / "m")
    torch.testing.assert_close(loaded.keyword_bank, model.keyword_bank)
    with pytest.raises(ValueError, match="needs model.regions, global_guidance"):
        _keyword_model(tiny_language, regions=True)
    with pytest.raises(ValueError, match=r"model.keyword_top_k: 9 is not within 1..7"):
        _keyword_model(tiny_language, top_k=9)
    with pytest.raises(ValueError, match="model.condition: unknown 'pixels'"):
        tiny_captioner(tiny_language, condition="pixels")


def _word_encoder(texts: list[str]) -> np.ndarray:
    """A text encoder the test defines: a fixed random projection of each caption's character counts."""
    counts = np.zeros((len(texts), 128), np.float32)
    for i, text in enumerate(texts):
        for ch in text:
            counts[i, ord(ch) % 128] += 1
    return counts @ np.random.default_rng(0).normal(size=(128, D_CLIP)).astype(np.float32)


def test_clip_rerank_keeps_the_beam_closest_to_the_image(tiny_language):
    model = _keyword_model(tiny_language).eval()
    batch = _batch(model, n=4)
    cfg = DecodeConfig(method="beam", beam_size=4, max_tokens=6, rerank="clip")
    beams, _ = search(model, model.prefix(batch).embeddings, cfg, 0, 4)  # (B, 4, T), most probable first
    candidates = [texts_of(model, b) for b in beams]
    chosen = decode(model, batch, cfg, _word_encoder)
    for image, options, caption in zip(batch.clip, candidates, chosen):
        similarity = F.normalize(torch.from_numpy(_word_encoder(options)), dim=-1) @ F.normalize(image, dim=0)
        assert caption == options[int(similarity.argmax())]
    assert decode(model, batch, DecodeConfig(method="beam", beam_size=4, max_tokens=6)) == [c[0] for c in candidates]
    with pytest.raises(ValueError, match="rerank clip ranks the final beams"):
        decode(model, batch, DecodeConfig(method="greedy", rerank="clip"), _word_encoder)
    with pytest.raises(ValueError, match="needs CLIP's text encoder"):
        decode(model, batch, cfg)


def test_labelled_split_is_seeded_disjoint_and_never_empty():
    labelled, unlabelled = labelled_split(list(range(100, 150)), 0.1, seed=3)
    assert len(labelled) == 5 and sorted(labelled + unlabelled) == list(range(100, 150))
    assert labelled_split(list(range(100, 150)), 0.1, seed=3)[0] == labelled != labelled_split(list(range(100, 150)), 0.1, 4)[0]
    assert len(labelled_split([7, 8, 9], 0.02, seed=0)[0]) == 1
    assert labelled_split([7, 8], 1.0, seed=0) == ([7, 8], [])


def test_caption_mask_and_samples_stop_at_eos(tiny_language):
    model = tiny_captioner(tiny_language).eval()
    eos = model.tokenizer.eos_token_id
    tokens = torch.tensor([[5, eos, eos, eos], [5, 6, 7, 8], [eos, 9, eos, 9]])
    assert caption_mask(tokens, eos).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    torch.manual_seed(0)
    drawn = sample(model, model.prefix(_batch(model, 6)).embeddings, max_tokens=12)
    for row in drawn.tolist():
        assert eos not in row or all(t == eos for t in row[row.index(eos):])


def _early_letter_encoder(texts: list[str]) -> np.ndarray:
    """A reward the test defines: with the image embedding e_0, the cosine grows with the share of
    words that start with a..m."""
    share = np.array([np.mean([w[0] <= "m" for w in t.split()]) if t.split() else 0.0 for t in texts], np.float32)
    out = np.zeros((len(texts), D_CLIP), np.float32)
    out[:, 0], out[:, 1] = share, 1 - share
    return out


def test_self_critical_training_raises_the_reward(tiny_language):
    model = tiny_captioner(tiny_language, **_NO_IMAGE_BRANCH).train()
    batch = replace(_batch(model, 8), clip=torch.eye(D_CLIP)[[0] * 8], text=None, tokens=None, mask=None)  # no captions
    objective = SelfCritical(model, ClipReward(_early_letter_encoder), max_tokens=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def mean_reward() -> float:
        torch.manual_seed(1)
        with torch.no_grad():
            return float(np.mean([objective(batch)["reward"].item() for _ in range(5)]))

    before = mean_reward()
    torch.manual_seed(0)
    for _ in range(30):
        optimizer.zero_grad()
        objective(batch)["total"].backward()
        optimizer.step()
    assert mean_reward() > before + 0.1  # 0.59 → 0.81 here; with the sign of the advantage flipped it falls


def test_stage_two_follows_stage_one_and_yields_the_model(tiny_language, tmp_path):
    model = tiny_captioner(tiny_language, **_NO_IMAGE_BRANCH)
    labelled = synthetic_items(n=4, tokenizer=model.tokenizer)
    unlabelled = [{k: v for k, v in item.items() if k not in ("tokens", "text")} for item in synthetic_items(n=4, seed=1)]
    scores = iter([5.0, 4.0, 1.0, 2.0])  # stage 1's first epoch scores best, but stage 2 gives the model
    cfg = TrainConfig(phase1_epochs=1, phase2_epochs=1, scst_epochs=2, labelled_fraction=0.5, batch_size=4,
                      scst_reward="clip")
    best = train(model, labelled, cfg, tmp_path / "model", tmp_path / "live", lambda m: {"s": next(scores)}, "s",
                 torch.device("cpu"), scst=SelfCriticalStage(unlabelled, ClipReward(_early_letter_encoder)))
    assert (best["epoch"], best["s"]) == (3, 2.0)
    assert (tmp_path / "live/plots/metrics/train/loss_reward.tsv").exists()
    with pytest.raises(ValueError, match="needs train.labelled_fraction < 1"):
        check_mode(model, TrainConfig(scst_epochs=1, scst_reward="clip"))
    with pytest.raises(ValueError, match="train.labelled_fraction: 0.0 is not in"):
        check_mode(model, TrainConfig(labelled_fraction=0.0))

