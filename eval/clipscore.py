"""CLIPScore and RefCLIPScore (Hessel et al., 2021), reference-free caption metrics in CLIP space.

CLIPScore(c, v) = w · max(cos(E_text(prompt + c), E_image(v)), 0), w = 2.5, prompt
"A photo depicts "; RefCLIPScore is the harmonic mean of CLIPScore and the best
max(cos(E_text(prompt + c), E_text(prompt + r)), 0) over the references r. The image embeddings
are the cached CLIP ones; the texts are encoded here with the same CLIP. Papers use CLIP ViT-B/32
with OpenAI's weights; figures from another CLIP (the demo's tiny one) are not comparable to them.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

PROMPT = "A photo depicts "
WEIGHT = 2.5


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(min=1e-12)


def clip_scores(images: np.ndarray, candidates: Sequence[str], references: Sequence[Sequence[str]],
                encode_texts: Callable[[list[str]], np.ndarray]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """images (n, d) CLIP image embeddings; one candidate and a list of references per image;
    ``encode_texts`` maps texts to CLIP text embeddings (m, d). Returns the corpus means and the
    per-image scores."""
    cand = _unit(encode_texts([PROMPT + c for c in candidates]))  # (n, d)
    clip_s = WEIGHT * np.maximum((cand * _unit(images)).sum(-1), 0)  # (n,)
    flat = [PROMPT + r for refs in references for r in refs]
    refs = _unit(encode_texts(flat))  # (sum m_i, d)
    owner = np.repeat(np.arange(len(references)), [len(r) for r in references])
    similarity = np.maximum((refs * cand[owner]).sum(-1), 0)  # each reference against its image's candidate
    best = np.zeros(len(references))
    np.maximum.at(best, owner, similarity)
    denominator = clip_s + best
    ref_clip_s = np.divide(2 * clip_s * best, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    per_image = {"CLIPScore": clip_s, "RefCLIPScore": ref_clip_s}
    return {name: float(values.mean()) for name, values in per_image.items()}, per_image
