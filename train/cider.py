"""CIDEr-D (Vedantam et al. 2015, the variant the COCO evaluation server reports) as a fast reward for
self-critical sequence training (SCST, Rennie et al. 2017).

SCST rewards a sampled caption by its CIDEr-D against the image's references, with document
frequencies taken once from the *training* captions (as ImageCaptioning.pytorch's ``CiderD`` does)
rather than from the batch being scored. :class:`CiderD` is built once from the training reference
sets; it caches each image's reference vectors, because every step scores several samples (and
the greedy baseline) against the same references.

The numbers are pycocoevalcap's ``CiderScorer`` (its ``Cider`` is CIDEr-D: Gaussian length penalty
with sigma 6, clipped tf-idf products): n-grams of 1..4 words; tf-idf weight tf * (log(N) -
log(max(1, df))) with N the number of images in the df corpus and df the number of images whose
references contain the n-gram; per order, the cosine with ``min(hyp, ref) * ref`` in the numerator;
times exp(-delta^2 / (2 sigma^2)); averaged over orders and references; times 10. Its caption
"length" is the number of bigrams (its 0-based order index is tested against 1), i.e.
max(words - 1, 0); see :func:`penalty_length` for why that never changes a score.

Captions must already be tokenised and lowercased by the caller (space-separated words): no PTB
tokenizer runs here, because the SCST reward is computed on the model's own tokenisation, per
step, where a Java subprocess would dominate the step.
"""
from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat

import numpy as np

MAX_N = 4  # n-gram orders 1..4, as pycocoevalcap
Ngram = tuple[str, ...]


def ngram_counts(caption: str) -> Counter[Ngram]:
    """Counts of the caption's 1- to 4-grams over its whitespace-separated words."""
    words = caption.split()
    return Counter(chain.from_iterable(zip(*(words[i:] for i in range(k))) for k in range(1, MAX_N + 1)))


def penalty_length(caption: str) -> int:
    """The length pycocoevalcap's length penalty uses: the number of bigrams, max(words - 1, 0).

    Its ``counts2vec`` adds term frequencies where the 0-based order index ``n == 1``, i.e. for
    2-grams. The difference of two such lengths equals the difference of word counts unless one
    caption is empty, and then its tf-idf vector (or the reference's) is zero and so is the
    product the penalty multiplies: the quirk is reproduced but cannot move a score."""
    return max(len(caption.split()) - 1, 0)


@dataclass(frozen=True)
class _RefSet:
    """One image's reference vectors: its n-grams' columns, their tf-idf weights (U, K) for K
    references, the references' norms per order (K, MAX_N) and their penalty lengths (K,)."""
    cols: dict[Ngram, int]
    weights: np.ndarray
    norms: np.ndarray
    lengths: np.ndarray

    @property
    def count(self) -> int:
        return self.weights.shape[1]


@dataclass
class CiderD:
    """CIDEr-D with fixed document frequencies (from the training references).

    ``document_frequency`` maps an n-gram (a tuple of words) to the number of documents (images)
    whose references contain it; ``ref_len`` is log(number of documents). ``corpus`` holds the
    training reference sets that :meth:`scores_by_id` indexes. At most ``cache_size`` images'
    reference vectors are kept, least recently used dropped (about 28 KiB an image with 5
    references of 8-14 words: 20,000 images take about 0.55 GB; a miss costs ~0.2 ms)."""
    document_frequency: dict[Ngram, int]
    ref_len: float
    sigma: float = 6.0
    corpus: Sequence[Sequence[str]] = ()
    cache_size: int = 20_000
    _idf: dict[Ngram, float] = field(init=False, repr=False)
    _cache: OrderedDict[Hashable, _RefSet] = field(init=False, repr=False, default_factory=OrderedDict)

    def __post_init__(self) -> None:
        self._idf = {g: self.ref_len - math.log(max(1.0, df)) for g, df in self.document_frequency.items()}

    @classmethod
    def from_corpus(cls, refs_per_image: Sequence[Sequence[str]], sigma: float = 6.0,
                    cache_size: int = 20_000) -> CiderD:
        """Document frequencies over the images' reference sets (an n-gram counts once per image
        whose references contain it) and ref_len = log(number of images)."""
        if not refs_per_image:
            raise ValueError("CiderD.from_corpus needs at least one image's references")
        df: Counter[Ngram] = Counter()
        for refs in refs_per_image:
            _check_ref_set(refs)
            df.update(set().union(*(ngram_counts(r) for r in refs)))
        return cls(dict(df), math.log(len(refs_per_image)), sigma, refs_per_image, cache_size)

    def idf(self, ngram: Ngram) -> float:
        """log(N) - log(max(1, df)); an n-gram absent from the corpus has df 0."""
        return self._idf.get(ngram, self.ref_len)

    def scores(self, candidates: Sequence[str], refs: Sequence[Sequence[str]]) -> np.ndarray:
        """CIDEr-D of each candidate against its own reference set (any references; cached by
        their text): (len(candidates),)."""
        _check_pairs(candidates, refs, "reference sets")
        return self._score(candidates, [self._ref_set(tuple(r), r) for r in refs])

    def scores_by_id(self, candidates: Sequence[str], ref_ids: Sequence[int]) -> np.ndarray:
        """CIDEr-D of each candidate against ``corpus[ref_ids[i]]`` (cached by index): the SCST
        reward, e.g. 5 samples per image each pointing at their image's index."""
        _check_pairs(candidates, ref_ids, "reference ids")
        for i in ref_ids:
            if not 0 <= i < len(self.corpus):
                raise IndexError(f"reference id {i} is outside the corpus of {len(self.corpus)} images")
        return self._score(candidates, [self._ref_set(int(i), self.corpus[i]) for i in ref_ids])

    def _ref_set(self, key: Hashable, refs: Sequence[str]) -> _RefSet:
        _check_ref_set(refs)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        made = self._cook(refs)
        self._cache[key] = made
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return made

    def _cook(self, refs: Sequence[str]) -> _RefSet:
        """Tf-idf weights of the references over the union of their n-grams, with their norms."""
        counts = [ngram_counts(r) for r in refs]
        cols = {g: i for i, g in enumerate(dict.fromkeys(chain.from_iterable(counts)))}
        rows = list(map(cols.__getitem__, chain.from_iterable(counts)))
        refs_of = list(chain.from_iterable(repeat(k, len(c)) for k, c in enumerate(counts)))
        tf = np.zeros((len(cols), len(refs)))
        tf[rows, refs_of] = list(chain.from_iterable(c.values() for c in counts))
        weights = tf * self._idfs(cols)[:, None]
        sq = _one_hot_orders(cols).T @ weights ** 2  # (MAX_N, K)
        lengths = np.array([penalty_length(r) for r in refs], dtype=float)
        return _RefSet(cols, weights, np.sqrt(sq.T), lengths)

    def _idfs(self, ngrams: Iterable[Ngram]) -> np.ndarray:
        return np.fromiter(map(self._idf.get, ngrams, repeat(self.ref_len)), float)

    def _score(self, candidates: Sequence[str], ref_sets: list[_RefSet]) -> np.ndarray:
        """All candidates at once: their n-grams found in their own references become rows of one
        gather from the batch's stacked reference weights; per-order sums by one bincount."""
        if not candidates:
            return np.zeros(0)
        unique = list({id(r): r for r in ref_sets}.values())
        slot = {id(r): s for s, r in enumerate(unique)}
        which = np.array([slot[id(r)] for r in ref_sets])  # (C,) each candidate's reference set
        width = max(r.count for r in unique)  # sets with fewer references: zero columns score 0
        stacked = np.concatenate([_pad(r.weights, width) for r in unique])  # (sum U, width)
        starts = np.cumsum([0] + [len(r.cols) for r in unique[:-1]])[which]
        target, weight, col = self._candidate_entries(candidates, ref_sets)
        # bincount returns integers when it gets no entries (a batch of empty captions)
        sq = np.bincount(target, weight ** 2, len(candidates) * MAX_N).astype(float).reshape(-1, MAX_N)
        found = col >= 0
        ref_w = stacked[col[found] + starts[target[found] // MAX_N]]  # (E, width)
        clipped = np.minimum(weight[found, None], ref_w) * ref_w
        flat = (target[found, None] * width + np.arange(width)).ravel()
        dot = np.bincount(flat, clipped.ravel(), len(candidates) * MAX_N * width)
        dot = dot.astype(float).reshape(len(candidates), MAX_N, width)
        ref_norm = np.stack([_pad(r.norms.T, width) for r in unique])[which]  # (C, MAX_N, width)
        ref_len = np.stack([_pad(r.lengths[None], width)[0] for r in unique])[which]  # (C, width)
        denom = np.sqrt(sq)[:, :, None] * ref_norm
        cos = np.divide(dot, denom, out=dot.copy(), where=denom != 0)  # a zero norm means a zero dot
        hyp_len = np.array([penalty_length(t) for t in candidates], dtype=float)
        penalty = np.exp(-((hyp_len[:, None] - ref_len) ** 2) / (2 * self.sigma ** 2))  # (C, width)
        counts = np.array([r.count for r in ref_sets], dtype=float)
        return 10.0 * (cos * penalty[:, None, :]).sum(axis=(1, 2)) / MAX_N / counts

    def _candidate_entries(self, candidates: Sequence[str],
                           ref_sets: list[_RefSet]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every candidate n-gram as (candidate * MAX_N + order index, tf-idf weight, column in its
        own reference set or -1); lookups run through ``map`` to keep the Python loop per caption."""
        keys: list[Ngram] = []
        tfs: list[int] = []
        cols: list[int] = []
        sizes: list[int] = []
        for text, refs in zip(candidates, ref_sets):
            counts = ngram_counts(text)
            keys.extend(counts)
            tfs.extend(counts.values())
            cols.extend(map(refs.cols.get, counts, repeat(-1)))
            sizes.append(len(counts))
        orders = np.fromiter(map(len, keys), np.int64, len(keys)) - 1
        target = np.repeat(np.arange(len(candidates)) * MAX_N, sizes) + orders
        weight = np.asarray(tfs, dtype=float) * self._idfs(keys)
        return target, weight, np.asarray(cols, dtype=np.int64)


def _one_hot_orders(ngrams: Iterable[Ngram]) -> np.ndarray:
    """(U, MAX_N) with a 1 at each n-gram's order index."""
    orders = np.fromiter(map(len, ngrams), np.int64) - 1
    return np.eye(MAX_N)[orders]


def _pad(a: np.ndarray, width: int) -> np.ndarray:
    """Zero columns up to ``width``: a missing reference has a zero vector and adds nothing."""
    return a if a.shape[1] == width else np.pad(a, ((0, 0), (0, width - a.shape[1])))


def _check_ref_set(refs: Sequence[str]) -> None:
    if isinstance(refs, str):
        raise ValueError(f"a reference set must be a sequence of captions, not the string {refs!r}")
    if len(refs) == 0:
        raise ValueError("a reference set is empty: CIDEr-D averages over at least one reference")


def _check_pairs(candidates: Sequence[str], refs: Sequence[object], what: str) -> None:
    if isinstance(candidates, str):
        raise ValueError("candidates must be a sequence of captions, not one string")
    if len(candidates) != len(refs):
        raise ValueError(f"{len(candidates)} candidates but {len(refs)} {what}: one per candidate")
