"""train.cider's CIDEr-D against pycocoevalcap's CiderScorer (when the df corpus is the scored set),
its batching and caching, the bigram-length quirk, and its input checks."""
import inspect
import random
import types

import numpy as np
import pytest
from pycocoevalcap.cider import cider_scorer

from train.cider import CiderD, ngram_counts, penalty_length

WORDS = "a the red blue green small large circle square triangle star on in near beach city field sky".split()


def _sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def _corpus(images: int = 15, seed: int = 0) -> list[list[str]]:
    """Reference sets of 3 to 6 captions of 2 to 12 words, with some one-word references."""
    rng = random.Random(seed)
    refs = [[_sentence(rng, 2, 12) for _ in range(rng.randint(3, 6))] for _ in range(images)]
    for i, word in ((3, "circle"), (7, "star")):
        if i < images:
            refs[i][0] = word
    return refs


def _candidates(refs: list[list[str]], seed: int) -> list[str]:
    """Varied candidates: empty, one word, a copy of a reference, a doubled reference, words
    outside the corpus, and random captions of 1 to 20 words."""
    rng = random.Random(seed)
    cands = [_sentence(rng, 1, 20) for _ in refs]
    cands[0], cands[1], cands[2] = "", "circle", refs[2][0]
    cands[4], cands[5] = f"{refs[4][0]} {refs[4][0]}", "zebra unicorn on the beach"
    return cands


def _pycoco(cands: list[str], refs: list[list[str]], module=cider_scorer) -> np.ndarray:
    scorer = module.CiderScorer(n=4, sigma=6.0)
    for c, r in zip(cands, refs):
        scorer += (c, r)
    return scorer.compute_score()[1]


def test_agrees_with_pycocoevalcap_per_image():
    refs = _corpus()
    cands = _candidates(refs, seed=1)
    expected = _pycoco(cands, refs)
    assert expected[2] > 1.0 and expected[0] == 0.0  # the copy scores well, the empty one 0
    ours = CiderD.from_corpus(refs)
    np.testing.assert_allclose(ours.scores(cands, refs), expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours.scores_by_id(cands, range(len(refs))), expected, rtol=0, atol=1e-9)
    # again from the cache, and on a subset: the df stays the corpus', not the batch's
    np.testing.assert_allclose(ours.scores_by_id(cands[:3], [0, 1, 2]), expected[:3], rtol=0, atol=1e-9)
    assert not np.allclose(CiderD.from_corpus(refs[:3]).scores(cands[:3], refs[:3]), expected[:3])
    # no n-gram in the whole batch: an empty candidate, and references that are all empty
    np.testing.assert_array_equal(ours.scores(["", ""], [refs[0], ["", ""]]), [0.0, 0.0])


def test_scst_batch_of_several_samples_per_image():
    """5 samples per image in one call (ids repeat, images in any order) give each sample the
    score pycocoevalcap gives it in a run with one candidate per image."""
    refs = _corpus(images=12, seed=3)
    samples = [_candidates(refs, seed=10 + s) for s in range(5)]
    ids = [i for i in reversed(range(len(refs))) for _ in range(5)]
    batch = [samples[s][i] for s, i in zip(list(range(5)) * len(refs), ids)]
    got = CiderD.from_corpus(refs).scores_by_id(batch, ids)
    expected = [_pycoco(samples[s], refs)[i] for s, i in zip(list(range(5)) * len(refs), ids)]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)


def test_a_reference_scores_higher_than_its_words_shuffled():
    refs = _corpus()
    words = refs[6][0].split()
    shuffled = words[:]
    random.Random(0).shuffle(shuffled)
    assert shuffled != words
    cider = CiderD.from_corpus(refs)
    same, mixed = cider.scores([refs[6][0], " ".join(shuffled)], [refs[6], refs[6]])
    assert same > mixed > 0.0


def _true_length_pycoco() -> types.ModuleType:
    """pycocoevalcap's scorer with its length counted over unigrams (the word count)."""
    source = inspect.getsource(cider_scorer)
    quirk = "if n == 1:\n                    length += term_freq"
    assert source.count(quirk) == 1, "pycocoevalcap's length line changed: re-check the quirk"
    module = types.ModuleType("cider_scorer_true_length")
    exec(compile(source.replace(quirk, quirk.replace("n == 1", "n == 0")), "<true length>", "exec"),
         module.__dict__)
    return module


def test_length_is_the_bigram_count_and_cannot_move_a_score():
    for words in range(8):
        caption = " ".join(WORDS[:words])
        bigrams = sum(c for g, c in ngram_counts(caption).items() if len(g) == 2)
        assert penalty_length(caption) == bigrams == max(words - 1, 0)
    assert penalty_length("red circle on the beach") == 4  # the true length, 5, is not used
    # delta = (h - 1) - (r - 1) unless a side is empty, whose zero vector zeroes the product:
    # pycocoevalcap with the true length scores the same, empty and one-word captions included
    refs = _corpus(seed=5)
    refs[0].append("")
    cands = _candidates(refs, seed=6)
    expected = _pycoco(cands, refs)
    np.testing.assert_array_equal(_pycoco(cands, refs, _true_length_pycoco()), expected)
    np.testing.assert_allclose(CiderD.from_corpus(refs).scores(cands, refs), expected, rtol=0, atol=1e-9)


def test_bad_input_is_refused_clearly():
    refs = _corpus(images=4)
    cider = CiderD.from_corpus(refs)
    with pytest.raises(ValueError, match="3 candidates but 4 reference sets"):
        cider.scores(["a", "b", "c"], refs)
    with pytest.raises(ValueError, match="2 candidates but 1 reference ids"):
        cider.scores_by_id(["a", "b"], [0])
    with pytest.raises(ValueError, match="not the string"):
        cider.scores(["a circle", "a star"], ["a red circle", "a blue star"])
    with pytest.raises(ValueError, match="empty"):
        cider.scores(["a circle"], [[]])
    with pytest.raises(IndexError, match="outside the corpus of 4"):
        cider.scores_by_id(["a circle"], [4])
    with pytest.raises(ValueError, match="at least one"):
        CiderD.from_corpus([])
    assert cider.scores([], []).shape == (0,)
