"""CLIPScore / RefCLIPScore against the definition, computed independently with open_clip."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eval.clipscore import clip_scores
from features.clip import encode_texts, load_clip


def test_scores_follow_the_definition(tiny_clip, tmp_path):
    cfg, _ = tiny_clip
    clip = load_clip(cfg, torch.device("cpu"))
    rng = np.random.default_rng(0)
    images = rng.normal(size=(3, clip.dim)).astype(np.float32)
    candidates = ["a red circle", "a blue square on the beach", "a red circle"]
    references = [["a red circle", "a blue square"], ["a red circle on the beach"], ["a blue square"] * 3]
    corpus, per_image = clip_scores(images, candidates, references, lambda texts: encode_texts(clip, texts, 8))
    with torch.no_grad():
        def embed(texts):
            return clip.model.encode_text(clip.tokenizer(["A photo depicts " + t for t in texts]))
        cand = embed(candidates)
        expected = 2.5 * F.cosine_similarity(cand, torch.from_numpy(images)).clamp(min=0)
        best = torch.stack([F.cosine_similarity(embed(refs), cand[i:i + 1]).clamp(min=0).max()
                            for i, refs in enumerate(references)])
    np.testing.assert_allclose(per_image["CLIPScore"], expected.numpy(), atol=1e-5)
    harmonic = 2 * expected * best / (expected + best)
    np.testing.assert_allclose(per_image["RefCLIPScore"], torch.nan_to_num(harmonic).numpy(), atol=1e-5)
    assert best[0] == pytest.approx(1.0, abs=1e-5)  # the candidate is one of its references
    assert corpus["CLIPScore"] == pytest.approx(float(expected.mean()), abs=1e-5)
    assert (per_image["CLIPScore"] >= 0).all() and (per_image["CLIPScore"] <= 2.5).all()
