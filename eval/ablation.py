"""The ablation table (the paper's Tables 5-6, and the related captioners): named model variants,
each trained and evaluated over several seeds, reported as mean ± std.

``VARIANTS`` is the registry: name → :class:`Variant`. Contract: a variant only switches modules
on or off or picks a registered alternative (a mapper, a conditioning, a training mode, a
re-ranker, the semi-supervised stages); everything else comes from params.yaml, so rows differ
in exactly what their label says.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class Variant:
    label: str  # the row's name in the table
    model: dict[str, Any] = field(default_factory=dict)  # model.* keys it sets
    train: dict[str, Any] = field(default_factory=dict)  # train.* keys it sets
    decode: dict[str, Any] = field(default_factory=dict)  # evaluate.decode.* keys it sets
    knn: dict[str, Any] = field(default_factory=dict)  # knn.* keys it sets (its cell computes its own graphs)
    loss: dict[str, Any] = field(default_factory=lambda: dict(_UNGROUNDED))  # train.loss.* keys it sets
    labelled_only: bool = False  # trains on ablation.labelled_fraction of the images' captions
    scst: bool = False  # ... then ablation.scst_epochs of SCST (the reward: train.scst_reward, which ``train`` may set)

    @property
    def needs(self) -> list[str]:
        """What the data set must offer to train this row (names from ``DATA_OFFERS``)."""
        grounded = [PHRASE_GROUNDINGS] if self.loss.get("grounding_weight", 0) > 0 else []
        return grounded + ([REGION_CROPS] if self.model.get("region_features", "detector") != "detector" else [])


PHRASE_GROUNDINGS = "phrase groundings"  # each caption's phrases tied to boxes (the demo world; Flickr30k Entities)
REGION_CROPS = "region crop embeddings"  # the store's region_clip kind (store.optional_kinds)
DATA_OFFERS = (PHRASE_GROUNDINGS, REGION_CROPS)


_UNGROUNDED = {"grounding_weight": 0.0}  # rows train without the grounding loss unless they say so
# every row states the region handling it uses, so rows stay what their label says whatever the
# main model in params.yaml uses
_PAPER = {"region_features": "detector", "local_text": "keywords", "prefix_regions": "mean", "region_token_skip": False,
          "box_embedding": False, "edge_geometry": False, "spatial_directions": 0, "spatial_context": "gates", "spatial_tokens": False,
          "spatial_token_order": "same"}
_PLAIN = {**_PAPER, "regions": False, "region_adapter": False, "gat": False, "global_guidance": False,
          "local_guidance": False}
_SWITCHES = {name: {**_PAPER, "gat": gat, "global_guidance": g, "local_guidance": loc} for name, gat, g, loc in (
    ("baseline", False, False, False), ("gat", True, False, False), ("gat_global", True, True, False),
    ("gat_local", True, False, True), ("gat_msg", True, True, True))}
_FEATURE_KNN = {"metric": "cosine"}  # the paper's graphs
# beyond the paper (issue: local detail): each region its own prefix token (with its own feature
# beside the GAT's), box geometry and CLIP-crop features; the rows below take one piece away each
_LOCAL = {**_SWITCHES["gat_msg"], "prefix_regions": "tokens", "region_order": "position", "region_token_skip": True,
          "box_embedding": True, "edge_geometry": True, "region_features": "both"}
_GATES = {"spatial_directions": 4, "spatial_context": "gates"}  # spatial context: learned direction gates...
_BINS = {"spatial_directions": 8, "spatial_context": "bins"}  # ... or GCN-LSTM's fixed 45° sectors
_GROUNDED = {"grounding_weight": 1.0, "grounding_heads": 2}
VARIANTS: dict[str, Variant] = {
    "clip_prefix": Variant("CLIP-prefix (ClipCap: CLIP → MLP → GPT-2)", _PLAIN),
    "keyword_only": Variant("Keyword-only (top-k CLIP keywords → GPT-2, CLIP re-ranking)",
                            {**_PLAIN, "condition": "keywords"}, decode={"rerank": "clip"}),
    "text_only": Variant("Text-only training (CapDec: noisy caption embeddings)", {**_PLAIN, "normalize_clip": True},
                         {"mode": "text_only"}),
    "labelled_subset": Variant("Full model, labelled subset only (stage 1 alone)", _SWITCHES["gat_msg"],
                               labelled_only=True, knn=_FEATURE_KNN),
    "semi_supervised": Variant("Semi-supervised: labelled subset, then SCST with CLIP reward", _SWITCHES["gat_msg"],
                               {"scst_reward": "clip"}, labelled_only=True, scst=True, knn=_FEATURE_KNN),
    **{name: Variant(label, _SWITCHES[name], knn=_FEATURE_KNN) for name, label in (
        ("baseline", "Baseline: CLIP + regions + GPT-2"), ("gat", "+ GAT-LFE"),
        ("gat_global", "+ GAT-LFE + global guidance"), ("gat_local", "+ GAT-LFE + local guidance"),
        ("gat_msg", "+ GAT-LFE + MSG (full model)"))},
    "gat_msg_scst": Variant("+ GAT-LFE + MSG, then SCST with the CIDEr-D reward", _SWITCHES["gat_msg"],
                            {"scst_reward": "cider"}, scst=True, knn=_FEATURE_KNN),
    # eq. 12's other reading: f_local_text from the object keywords nearest the GAT's nodes
    "gat_msg_graph": Variant("+ GAT-LFE + MSG, local keywords from the graph's nodes",
                             {**_SWITCHES["gat_msg"], "local_text": "graph"}, knn=_FEATURE_KNN),
    "local_detail": Variant("Local detail: region tokens + box geometry + CLIP-crop features", _LOCAL, knn=_FEATURE_KNN),
    **{name: Variant(label, {**_LOCAL, **switches}, knn=knn) for name, label, switches, knn in (
        ("local_detail_mean", "Local detail, regions mean-pooled (no tokens)", {"prefix_regions": "mean"}, _FEATURE_KNN),
        ("local_detail_no_skip", "Local detail, tokens from the GAT output alone", {"region_token_skip": False},
         _FEATURE_KNN),
        ("local_detail_no_gat", "Local detail, no GAT", {"gat": False, "edge_geometry": False}, _FEATURE_KNN),
        ("local_detail_no_msg", "Local detail, no MSG", {"global_guidance": False, "local_guidance": False},
         _FEATURE_KNN),
        ("local_detail_no_geometry", "Local detail, no box geometry", {"box_embedding": False, "edge_geometry": False},
         _FEATURE_KNN),
        ("local_detail_detector_only", "Local detail, detector region features only", {"region_features": "detector"},
         _FEATURE_KNN),
        ("local_detail_knn_center", "Local detail, KNN by box centres", {}, {"metric": "center"}),
        ("local_detail_knn_both", "Local detail, KNN by features and centres", {}, {"metric": "both"}),
        ("local_detail_spatial", "Local detail + spatial context (4 direction gates)", _GATES, _FEATURE_KNN),
        ("local_detail_bins", "Local detail + spatial context (8 angle bins)", _BINS, _FEATURE_KNN))},
    **{name: Variant(label, {**_LOCAL, **spatial}, knn=_FEATURE_KNN, loss=_GROUNDED) for name, label, spatial in (
        ("local_detail_grounded", "Local detail + spatial context (4 direction gates) + grounding loss", _GATES),
        ("local_detail_grounded_bins", "Local detail + 8 angle bins, each region's in a token of its own + grounding "
         "loss", {**_BINS, "spatial_tokens": True}),
        ("local_detail_grounded_top_down", "Local detail + 8 angle bins in tokens of their own, ordered top to bottom, "
         "+ grounding loss (main model)", {**_BINS, "spatial_tokens": True, "spatial_token_order": "top_down"}))},
}

# columns of the table: (metrics.json key, header)
COLUMNS = (("BLEU-4", "BLEU-4"), ("METEOR", "METEOR"), ("ROUGE-L", "ROUGE-L"), ("CIDEr", "CIDEr"),
           ("CLIPScore", "CLIPScore"), ("world/object_precision", "object P"), ("world/object_recall", "object R"),
           ("world/relation_accuracy", "relation acc"), ("world/relation_ranking", "relation rank"))


@dataclass(frozen=True)
class AblationConfig:
    """Section ``ablation`` of the parameters; each field's comment documents its key."""

    variants: list[str] = field(default_factory=lambda: list(VARIANTS))  # rows: eval/ablation.py VARIANTS (paper Tables
    #   5-6 + related captioners)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # each row is the mean ± std over these training seeds
    phase1_epochs: int = 1  # a shorter schedule than `train` (the rows are compared with each other,
    phase2_epochs: int = 5  # not with the main model); other train.* and model.* keys apply as set
    labelled_fraction: float = 0.1  # labelled_subset, semi_supervised: share of training images with captions
    scst_epochs: int = 2  # semi_supervised (CLIP reward, on the other images), gat_msg_scst (CIDEr-D): SCST epochs

    def __post_init__(self) -> None:
        for name in self.variants:  # fail at load time, not an hour into `dvc repro`
            variant(name)


def variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"ablation.variants: unknown variant {name!r}; known: {sorted(VARIANTS)}")
    return VARIANTS[name]


def check_variants(names: list[str], offered: set[str], dataset: str) -> None:
    """Refuse, before any training, a variant that needs what the data set (and the store's
    optional kinds) do not offer."""
    for name in names:
        missing = [need for need in variant(name).needs if need not in offered]
        if missing:
            how = " (store.optional_kinds: region_clip gives region crop embeddings)" if REGION_CROPS in missing else ""
            raise ValueError(f"ablation.variants: {name!r} needs {', '.join(missing)}, which data set {dataset!r} "
                             f"does not have{how}; remove it from ablation.variants (rows that need nothing extra: "
                             f"{', '.join(n for n in VARIANTS if not VARIANTS[n].needs)})")


def summarize(results: Mapping[str, Mapping[int, Mapping[str, float]]]) -> list[dict[str, Any]]:
    """variant → seed → metrics  ⇒  one row per variant: label, seeds, and mean/std per column
    (sample standard deviation; 0 for a single seed)."""
    rows = []
    for name, by_seed in results.items():
        row: dict[str, Any] = {"variant": name, "label": VARIANTS[name].label, "seeds": len(by_seed)}
        for key, _ in COLUMNS:
            values = [m[key] for m in by_seed.values() if m.get(key) is not None and not math.isnan(m[key])]
            if values:
                mean = sum(values) / len(values)
                std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
                row[key] = {"mean": mean, "std": std}
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    keys = [(k, h) for k, h in COLUMNS if any(k in r for r in rows)]
    lines = ["| model | seeds | " + " | ".join(h for _, h in keys) + " |", "|---|---|" + "---|" * len(keys)]
    for r in rows:
        cells = [f"{r[k]['mean']:.3f} ± {r[k]['std']:.3f}" if k in r else "–" for k, _ in keys]
        lines.append(f"| {r['label']} | {r['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    keys = [k for k, _ in COLUMNS]
    writer.writerow(["variant", "label", "seeds"] + [f"{k} {s}" for k in keys for s in ("mean", "std")])
    for r in rows:
        writer.writerow([r["variant"], r["label"], r["seeds"]]
                        + [f"{r[k][s]:.6f}" if k in r else "" for k in keys for s in ("mean", "std")])
    return out.getvalue()
