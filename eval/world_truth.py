"""Judging captions of the demo world against what each image really shows.

The world's captions follow a small grammar (world/grammar.py), so a caption can be read back
into its scene word, its object mentions ("a [small|large] <colour> <shape>") and its relations
("<mention> to the left of|to the right of|above|below <mention>"), and each checked against the
image's ground truth (``scene`` and ``objects`` in the manifest entry's ``extra``):

- scene accuracy: the caption names the image's scene;
- object precision: mentioned objects that exist (colour and shape, and size when one is said);
- object recall: objects of the image that the caption mentions (colour and shape);
- relation accuracy: stated relations that hold between objects of the image.

Corpus figures pool the counts over images (micro-averages).
"""
from __future__ import annotations

from typing import Any, Mapping

from world.grammar import read_caption, relation, truth_objects


def judge(caption: str, extra: Mapping[str, Any]) -> dict[str, int]:
    """Counts for one caption against one image's truth (pooled by :func:`world_scores`)."""
    reading, objects = read_caption(caption), truth_objects(extra)
    holds = [any(relation(x, y) == rel for x in objects if a.fits(x) for y in objects if y is not x and b.fits(y))
             for a, rel, b in reading.relations]
    return {
        "scene_right": int(reading.scene == extra["scene"]),
        "mentions": len(reading.mentions),
        "mentions_right": sum(any(m.fits(o) for o in objects) for m in reading.mentions),
        "objects": len(objects),
        "objects_mentioned": sum(any(m.color == o.color and m.shape == o.shape for m in reading.mentions)
                                 for o in objects),
        "relations": len(holds),
        "relations_right": sum(holds),
    }


def world_scores(candidates: Mapping[str, str], truth: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, float], dict]:
    """Corpus figures and per-image counts for captions of demo-world images."""
    per_image = {i: judge(caption, truth[i]) for i, caption in candidates.items()}
    total = {k: sum(c[k] for c in per_image.values()) for k in next(iter(per_image.values()))}

    def ratio(a: str, b: str) -> float:
        return total[a] / total[b] if total[b] else float("nan")

    return {
        "world/scene_accuracy": total["scene_right"] / len(per_image),
        "world/object_precision": ratio("mentions_right", "mentions"),
        "world/object_recall": ratio("objects_mentioned", "objects"),
        "world/relation_accuracy": ratio("relations_right", "relations"),
        "world/relations_stated": total["relations"] / len(per_image),
    }, per_image
