"""Training and evaluation data over the feature store: datasets and the graph-batching collate.

Nothing here opens HDF5 files by hand: :class:`CachedFeatures` reads through the store's
:class:`~features.store.FeatureReader`, which opens shards lazily in each worker process.
"""
from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.ops import box_iou
from transformers import PreTrainedTokenizerBase

from features.store import KINDS, FeatureReader
from train.region_graph import box_geometry


@dataclass(frozen=True)
class StoreSpec:
    """Where the features are and what configuration they must have been made with."""

    dir: Path
    shard_size: int
    image_ids: list[str]
    expected: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> provenance
    max_open_shards: int = 16  # per kind and process (each open HDF5 file costs ~0.5 MB)


class CachedFeatures:
    """Everything the model needs about one image, read from the store by manifest index."""

    KINDS = KINDS  # the store's kinds, in its order

    def __init__(self, spec: StoreSpec, with_tokens: bool = False, with_text: bool = True,
                 with_region_clip: bool = False):
        self.with_tokens = with_tokens  # also the cached ViT tokens (for fine-tuning CLIP's last blocks)
        self.shard_size, self.max_open_shards = spec.shard_size, spec.max_open_shards
        self.image_ids = spec.image_ids  # by manifest index
        left_out = {"clip_text"} if not with_text else set()  # new images have no captions
        if not with_region_clip:  # only models that read the regions' CLIP embeddings need them
            left_out.add("region_clip")
        kinds = tuple(k for k in self.KINDS if k not in left_out)
        self.readers = {kind: FeatureReader(spec.dir, kind, spec.shard_size, len(spec.image_ids),
                                            spec.expected.get(kind, {}), spec.max_open_shards) for kind in kinds}

    def close(self) -> None:
        for reader in self.readers.values():
            reader.close()

    def validate(self) -> None:
        for reader in self.readers.values():
            reader.validate_all()

    def is_valid(self, index: int) -> bool:
        """False for an image rejected at extraction by any stage."""
        return all(reader.is_valid(index) for reader in self.readers.values())

    def image(self, index: int) -> dict[str, np.ndarray]:
        return self.images([index])[0]

    def images(self, indices: list[int]) -> list[dict[str, np.ndarray]]:
        """Everything the model needs about each image; batched reads (one per shard and dataset)."""
        def rows(kind: str, name: str) -> list[np.ndarray]:
            return self.readers[kind].rows(indices, name)

        counts = [int(c) for c in rows("regions", "counts")]
        per_region = {  # padded to the store's max regions: cut to each image's count
            "features": rows("regions", "features"), "boxes": rows("regions", "boxes"),
            "keyword_ids": rows("region_keywords", "ids"), "keyword_scores": rows("region_keywords", "scores"),
            "neighbors": rows("knn", "neighbors"), "weights": rows("knn", "weights"),
        }
        if "region_clip" in self.readers:
            per_region["region_clip"] = rows("region_clip", "embeddings")
        per_image = {"clip": rows("clip_image", "embeddings"), "image_size": rows("regions", "image_sizes")}
        if "clip_text" in self.readers:
            per_image["caption_text"] = self.readers["clip_text"].captions(indices)
        if self.with_tokens:
            per_image["clip_tokens"] = rows("clip_image", "tokens")
        dtypes = {"keyword_ids": np.int64, "neighbors": np.int32}
        return [{
            **{name: values[k][:counts[k]].astype(dtypes.get(name, np.float32)) for name, values in per_region.items()},
            **{name: values[k].astype(np.float32) for name, values in per_image.items()},
        } for k in range(len(indices))]


def tokenize_captions(tokenizer: PreTrainedTokenizerBase, captions: list[str], max_tokens: int,
                      chunk: int = 10_000) -> tuple[np.ndarray, np.ndarray]:
    """Every caption's token ids followed by EOS (GPT-2 appends no special tokens itself), cut to
    ``max_tokens``, as one flat int32 array and offsets (n + 1,): compact, and tokenized once
    rather than in every epoch."""
    lengths, chunks = [0], []  # one array per chunk: no Python object per caption survives a chunk
    for start in range(0, len(captions), chunk):
        cut = [ids[: max_tokens - 1] + [tokenizer.eos_token_id]
               for ids in tokenizer(captions[start:start + chunk], add_special_tokens=False).input_ids]
        chunks.append(np.fromiter((t for ids in cut for t in ids), dtype=np.int32))
        lengths += [len(ids) for ids in cut]
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.int32)), np.cumsum(lengths)


def labelled_split(indices: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(labelled, unlabelled): a seeded random ``fraction`` of the images (at least one) keeps
    its captions; semi-supervised training never reads the others' captions."""
    if fraction >= 1:
        return list(indices), []
    order = np.random.default_rng(seed).permutation(len(indices))
    n = max(1, round(fraction * len(indices)))
    return [indices[i] for i in sorted(order[:n])], [indices[i] for i in sorted(order[n:])]


# A phrase grounding (Flickr30k Entities style): (first word, end word, boxes (x0, y0, x1, y1) in
# pixels of the objects the phrase names), word indices over the caption's whitespace words
Grounding = tuple[int, int, Sequence[Sequence[float]]]
GROUNDING_IOU = 0.5  # a region shows a grounded object when their boxes overlap this much


def token_phrases(tokenizer: PreTrainedTokenizerBase, caption: str, phrases: Sequence[Grounding],
                  n_tokens: int) -> np.ndarray:
    """For each of the caption's first ``n_tokens`` tokens, the index of the phrase it is grounded
    to: the latest phrase begun at or before the token's word, so the words after a mention (a
    relation, the next mention's article) stay with the object just named. -1: none yet (or EOS)."""
    word_ends = [m.end() for m in re.finditer(r"\S+", caption)]
    offsets = tokenizer(caption, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    firsts = np.asarray([p[0] for p in phrases], dtype=np.int64)
    out = np.full(n_tokens, -1, dtype=np.int32)
    for t, (_, end) in enumerate(offsets[:n_tokens]):
        begun = np.flatnonzero(firsts <= bisect_left(word_ends, end))  # the word holding the token's last character
        if len(begun):
            out[t] = begun[-1]
    return out


class CaptionPairs(Dataset):
    """One item per (image, reference caption) pair of the given images: the training set. The
    index is a few numpy arrays (no Python object per pair), so it stays small at COCO scale.

    With ``groundings`` (per image, per caption, its phrases; any iterable, read once), each item also says which of its
    image's regions every token is grounded to (``ground``, (T, N) bool: the regions whose box
    overlaps a box of the token's phrase by IoU ≥ GROUNDING_IOU), for the grounding loss."""

    BOX_CHUNK = 100_000  # phrase boxes gathered into one array at a time while indexing

    def __init__(self, features: CachedFeatures, indices: list[int], captions: list[list[str]],
                 tokenizer: PreTrainedTokenizerBase, max_tokens: int,
                 groundings: Iterable[Sequence[Sequence[Grounding]]] | None = None):
        self.features = features
        self.image = np.repeat(np.asarray(indices, dtype=np.int64), [len(c) for c in captions])  # (P,)
        self.caption = np.concatenate([np.arange(len(c)) for c in captions]) if captions else np.zeros(0, np.int64)
        texts = [t for caps in captions for t in caps]
        self.tokens, self.offsets = tokenize_captions(tokenizer, texts, max_tokens)
        # groundings: token → phrase (-1: none), phrase p's boxes are phrase_boxes[box_offsets[p]:box_offsets[p + 1]]
        self.token_phrase, self.phrase_boxes, self.box_offsets = None, np.zeros((0, 4), np.float32), np.zeros(1, np.int64)
        if groundings is not None:
            self._index_groundings(tokenizer, texts, groundings)

    def _index_groundings(self, tokenizer: PreTrainedTokenizerBase, texts: list[str],
                          groundings: Iterable[Sequence[Sequence[Grounding]]]) -> None:
        """Flat grounding arrays, ``groundings`` consumed image by image: no Python object per
        phrase survives (COCO-size sets have millions of phrases)."""
        self.token_phrase = np.full(len(self.tokens), -1, dtype=np.int32)
        counts, chunks, pending = [], [], []  # boxes per phrase; boxes gathered in chunks
        phrases = (p for caps in groundings for p in caps)
        for k, (text, caption_phrases) in enumerate(zip(texts, phrases, strict=True)):
            local = token_phrases(tokenizer, text, caption_phrases, self.offsets[k + 1] - self.offsets[k])
            self.token_phrase[self.offsets[k]:self.offsets[k + 1]] = np.where(local >= 0, local + len(counts), -1)
            for _, _, boxes in caption_phrases:
                pending.append(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
                counts.append(len(pending[-1]))
            if len(pending) >= self.BOX_CHUNK:
                chunks, pending = chunks + [np.concatenate(pending)], []
        if counts:
            self.phrase_boxes = np.concatenate(chunks + pending)
            self.box_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.image)

    def item_shards(self) -> np.ndarray:
        """(P,) the store shard of each pair's image (the trainer batches shard-aware)."""
        return self.image // self.features.shard_size

    def __getitem__(self, k: int) -> dict[str, Any]:
        return self.__getitems__([k])[0]

    def __getitems__(self, ks: list[int]) -> list[dict[str, Any]]:
        """The DataLoader asks for a whole batch at once: one store read per shard and dataset."""
        items = self.features.images(self.image[ks].tolist())
        for item, k in zip(items, ks):
            item["text"] = item.pop("caption_text")[self.caption[k]]
            item["tokens"] = self.tokens[self.offsets[k]:self.offsets[k + 1]]
            item["index"] = int(self.image[k])
            if self.token_phrase is not None:
                item["ground"] = self.ground(self.token_phrase[self.offsets[k]:self.offsets[k + 1]], item["boxes"])
        return items

    def ground(self, token_phrase: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """(T, N): token t is grounded to region n. One IoU call for all the caption's phrases
        (cheap enough per batch that nothing is cached: a cache grew with the data set)."""
        ground = np.zeros((len(token_phrase), len(boxes)), dtype=bool)
        phrases = np.unique(token_phrase[token_phrase >= 0])  # (P,)
        starts, ends = self.box_offsets[phrases], self.box_offsets[phrases + 1]
        if not len(phrases) or not len(boxes) or (ends == starts).all():
            return ground
        rows = np.concatenate([np.arange(a, b) for a, b in zip(starts, ends)])  # (M,) the phrases' boxes
        owner = np.repeat(np.arange(len(phrases)), ends - starts)  # (M,) phrase of each box
        overlaps = box_iou(torch.from_numpy(boxes).float(), torch.from_numpy(self.phrase_boxes[rows])) >= GROUNDING_IOU
        shows = np.zeros((len(phrases), len(boxes)), dtype=bool)  # (P, N)
        np.logical_or.at(shows, owner, overlaps.numpy().T)
        grounded = token_phrase >= 0
        ground[grounded] = shows[np.searchsorted(phrases, token_phrase[grounded])]
        return ground


class Images(Dataset):
    """One item per image (for decoding and validation)."""

    def __init__(self, features: CachedFeatures, indices: list[int]):
        self.features, self.indices = features, indices

    def __len__(self) -> int:
        return len(self.indices)

    def item_shards(self) -> np.ndarray:
        return np.asarray(self.indices, dtype=np.int64) // self.features.shard_size

    def __getitem__(self, k: int) -> dict[str, Any]:
        return self.__getitems__([k])[0]

    def __getitems__(self, ks: list[int]) -> list[dict[str, Any]]:
        indices = [self.indices[k] for k in ks]
        items = self.features.images(indices)
        for item, index in zip(items, indices):
            if "caption_text" in item:
                item["text"] = item.pop("caption_text").mean(axis=0)
            item["index"] = index
        return items


def graph_edges(neighbors: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Directed K-NN lists (n, K) → symmetric edge list: i ~ j if either picked the other.
    Returns edge_index (2, E) as (source, target) and weights (E,)."""
    rows, slots = np.nonzero(neighbors >= 0)
    src, dst = neighbors[rows, slots].astype(np.int64), rows.astype(np.int64)
    w = weights[rows, slots]
    src, dst, w = np.concatenate([src, dst]), np.concatenate([dst, src]), np.concatenate([w, w])
    n = max(len(neighbors), 1)
    _, first = np.unique(src * n + dst, return_index=True)
    return np.stack([src[first], dst[first]]), w[first]


@dataclass
class Batch:
    """Images batched as one disjoint region graph (V regions, E edges) plus per-image tensors:
    what :func:`collate` makes and the model, losses and decoding read. The optional fields are
    there when the items carry them."""

    clip: torch.Tensor  # (B, d) CLIP image embeddings
    region_features: torch.Tensor  # (V, D) the detector's region features, image after image
    geometry: torch.Tensor  # (V, 5) each box's geometry (train.region_graph.box_geometry)
    node_batch: torch.Tensor  # (V,) the image of each region
    edge_index: torch.Tensor  # (2, E) KNN graph edges (source, target) over the batch's regions
    edge_weight: torch.Tensor  # (E,)
    keyword_ids: torch.Tensor  # (B, N, K) each region's local keywords, -1 past its image's regions
    keyword_scores: torch.Tensor  # (B, N, K)
    index: torch.Tensor  # (B,) each image's store index
    text: torch.Tensor | None = None  # (B, d) mean CLIP embedding of the image's captions (L_align)
    region_clip: torch.Tensor | None = None  # (V, d) each region crop through CLIP
    clip_tokens: torch.Tensor | None = None  # (B, L, width) ViT tokens entering its last two blocks
    tokens: torch.Tensor | None = None  # (B, T) caption token ids, padded
    mask: torch.Tensor | None = None  # (B, T) 1 on the caption's tokens
    ground: torch.Tensor | None = None  # (B, T, V) token t of caption b is grounded to region v

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{f.name: None if v is None else v.to(device)
                        for f in fields(self) for v in [getattr(self, f.name)]})

    def __len__(self) -> int:
        return len(self.clip)


def collate(items: list[dict[str, Any]], pad_id: int = 0) -> Batch:
    """Batch images into one disjoint graph plus padded per-image tensors."""
    counts = [len(it["features"]) for it in items]
    offsets = np.cumsum([0] + counts[:-1])
    edges, edge_weights = zip(*(graph_edges(it["neighbors"], it["weights"]) for it in items))
    n_max, k = max(counts), items[0]["keyword_ids"].shape[1]
    keyword_ids = torch.full((len(items), n_max, k), -1, dtype=torch.long)  # -1: no keyword (padding)
    keyword_scores = torch.zeros(len(items), n_max, k)
    for b, it in enumerate(items):
        keyword_ids[b, :counts[b]] = torch.from_numpy(it["keyword_ids"])
        keyword_scores[b, :counts[b]] = torch.from_numpy(it["keyword_scores"])
    batch = Batch(
        clip=torch.from_numpy(np.stack([it["clip"] for it in items])),
        region_features=torch.from_numpy(np.concatenate([it["features"] for it in items])),
        geometry=box_geometry(torch.from_numpy(np.concatenate([it["boxes"] for it in items])),
                              torch.from_numpy(np.repeat(np.stack([it["image_size"] for it in items]), counts, axis=0))),
        node_batch=torch.repeat_interleave(torch.arange(len(items)), torch.tensor(counts)),
        edge_index=torch.from_numpy(np.concatenate([e + o for e, o in zip(edges, offsets)], axis=1)),
        edge_weight=torch.from_numpy(np.concatenate(edge_weights)),
        keyword_ids=keyword_ids, keyword_scores=keyword_scores,
        index=torch.tensor([it["index"] for it in items]),
    )
    if "text" in items[0]:  # absent for new images
        batch.text = torch.from_numpy(np.stack([it["text"] for it in items]))
    if "region_clip" in items[0]:  # model.region_features clip | both
        batch.region_clip = torch.from_numpy(np.concatenate([it["region_clip"] for it in items]))
    if "clip_tokens" in items[0]:
        batch.clip_tokens = torch.from_numpy(np.stack([it["clip_tokens"] for it in items]))
    if "tokens" in items[0]:
        batch.tokens, batch.mask = pad_tokens([it["tokens"] for it in items], pad_id)
    if "ground" in items[0]:
        batch.ground = torch.zeros(*batch.tokens.shape, len(batch.region_features), dtype=torch.bool)
        for b, (it, offset) in enumerate(zip(items, offsets)):
            batch.ground[b, :len(it["ground"]), offset:offset + counts[b]] = torch.from_numpy(it["ground"])
    return batch


def pad_tokens(sequences: Sequence[Sequence[int] | np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id sequences of different lengths → tokens (n, T) padded with ``pad_id`` and mask (n, T)."""
    length = max(len(ids) for ids in sequences)
    tokens = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(sequences), length, dtype=torch.long)
    for b, ids in enumerate(sequences):
        tokens[b, :len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        mask[b, :len(ids)] = 1
    return tokens, mask
