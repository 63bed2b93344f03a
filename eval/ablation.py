"""The ablation table (the paper's Tables 5-6): named model variants, each trained and evaluated
over several seeds, reported as mean ± std.

``VARIANTS`` is the registry: name → (row label, the ``model.*`` keys it sets, the ``train.*``
keys it sets). Contract: a variant only switches modules on or off or picks a registered
alternative (a mapper, a training mode); everything else comes from params.yaml, so rows
differ in exactly what their label says.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

_PLAIN = {"regions": False, "gat": False, "global_guidance": False, "local_guidance": False}
VARIANTS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "clip_prefix": ("CLIP-prefix (ClipCap: CLIP → MLP → GPT-2)", _PLAIN, {}),
    "text_only": ("Text-only training (CapDec: noisy caption embeddings)", {**_PLAIN, "normalize_clip": True},
                  {"mode": "text_only"}),
    "baseline": ("Baseline: CLIP + regions + GPT-2", {"gat": False, "global_guidance": False, "local_guidance": False},
                 {}),
    "gat": ("+ GAT-LFE", {"gat": True, "global_guidance": False, "local_guidance": False}, {}),
    "gat_global": ("+ GAT-LFE + global guidance", {"gat": True, "global_guidance": True, "local_guidance": False}, {}),
    "gat_local": ("+ GAT-LFE + local guidance", {"gat": True, "global_guidance": False, "local_guidance": True}, {}),
    "gat_msg": ("+ GAT-LFE + MSG (full model)", {"gat": True, "global_guidance": True, "local_guidance": True}, {}),
}

# columns of the table: (metrics.json key, header)
COLUMNS = (("BLEU-4", "BLEU-4"), ("METEOR", "METEOR"), ("ROUGE-L", "ROUGE-L"), ("CIDEr", "CIDEr"),
           ("CLIPScore", "CLIPScore"), ("world/object_precision", "object P"), ("world/object_recall", "object R"),
           ("world/relation_accuracy", "relation acc"))


@dataclass(frozen=True)
class AblationConfig:
    """Every key is documented in params.yaml (section ``ablation``)."""

    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    phase1_epochs: int = 1  # a shorter schedule than the main model's: rows are compared with each other
    phase2_epochs: int = 5


def variant_overrides(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model.* keys, train.* keys) the variant sets."""
    if name not in VARIANTS:
        raise ValueError(f"ablation.variants: unknown variant {name!r}; known: {sorted(VARIANTS)}")
    return VARIANTS[name][1], VARIANTS[name][2]


def summarize(results: Mapping[str, Mapping[int, Mapping[str, float]]]) -> list[dict[str, Any]]:
    """variant → seed → metrics  ⇒  one row per variant: label, seeds, and mean/std per column
    (sample standard deviation; 0 for a single seed)."""
    rows = []
    for name, by_seed in results.items():
        row: dict[str, Any] = {"variant": name, "label": VARIANTS[name][0], "seeds": len(by_seed)}
        for key, _ in COLUMNS:
            values = [m[key] for m in by_seed.values() if key in m and not math.isnan(m[key])]
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
