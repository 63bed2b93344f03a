"""Where demo-world captions go wrong, and whether the detector or the captioner is to blame.

eval/world_truth.py scores captions against the ground truth; this module explains the scores.
Pooled over images, it gives:

- attribute confusions (colour, shape, size): every object mention of a caption is resolved to
  the object of the image it describes — the object it fits or, for a wrong mention, the object it
  most plausibly meant (see :func:`resolve`) — and (true value → said value) is counted per
  attribute, so right mentions fill the diagonal and wrong ones show what was said instead;
- a relation confusion: for each stated relation whose two mentions both fit objects of the image,
  (true relation of those objects → stated relation); relations that cannot be resolved that way
  are counted apart as unresolved;
- attribution: each ground-truth object gets a detector status from the regions the captioner
  was given — ``missed`` (no box with IoU >= 0.5), ``misclassified`` (the best-overlapping box has
  another class) or ``detected`` — and each object-level caption error (an object the caption does
  not name by colour and shape, or a wrong mention of it) is blamed on the detector when that
  object was missed or misclassified (the captioner never saw a right region for it), else on the
  captioner. An object that a wrong mention meant counts once, as that wrong mention, not also as
  omitted. Wrong mentions no object explains (two of colour and shape wrong) are counted as
  unresolved and blamed on no one.
"""
from __future__ import annotations

import html
import math
from collections import Counter
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

from world.grammar import COLORS, RELATIONS, SHAPES, SIZES, Mention, WorldObject, read_caption, relation, truth_objects

# boxes (n, 4) as x0, y0, x1, y1 in pixels, and the class name of each box
Detections = tuple[np.ndarray, Sequence[str]]

# the labels of each confusion, in the order tables show them
LABELS: dict[str, tuple[str, ...]] = {
    "color": tuple(COLORS), "shape": SHAPES, "size": tuple(SIZES),
    "relation": RELATIONS,
}
IOU_MATCH = 0.5  # a box detects an object at this IoU: the PASCAL VOC / COCO AP50 criterion
DETECTOR_FAULTS = ("missed", "misclassified")


def overlaps_with(boxes: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """IoU of each of ``boxes`` (n, 4) with one ``box`` (4,), all x0, y0, x1, y1 → (n,)."""
    many = torch.as_tensor(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
    return box_iou(many, torch.tensor([list(box)], dtype=torch.float64))[:, 0].numpy()


def detector_status(obj: WorldObject, detections: Detections) -> str:
    """``missed``, ``misclassified`` or ``detected``: judged on the best-overlapping box alone, since
    that is the region that stands for the object in the captioner's graph."""
    boxes, labels = detections
    overlaps = overlaps_with(boxes, obj.box)  # (n,)
    if not len(overlaps) or overlaps.max() < IOU_MATCH:
        return "missed"
    return "detected" if labels[int(overlaps.argmax())] == obj.shape else "misclassified"


def resolve(mentions: Sequence[Mention], objects: Sequence[WorldObject]) -> list[int | None]:
    """Per mention, the index of the object it describes, or None when none is plausible.

    A mention that fits an object describes it. A wrong mention meant an object one attribute
    away, size aside: the same colour and shape (the size is wrong), the same shape (the colour is
    wrong) or the same colour (the shape is wrong). Among several, it prefers an object no mention
    got right (a caption rarely describes one object twice), then the fewest wrong attributes
    (size included), then size before colour before shape, then the first object.
    """
    right = {k for k, o in enumerate(objects) if any(m.fits(o) for m in mentions)}
    out: list[int | None] = []
    for m in mentions:
        fitting = [k for k, o in enumerate(objects) if m.fits(o)]
        if fitting:
            out.append(fitting[0])
            continue
        ranked = []
        for k, o in enumerate(objects):
            same = [(o.color, o.shape) == (m.color, m.shape), o.shape == m.shape, o.color == m.color]
            if any(same):
                wrong = (o.color != m.color) + (o.shape != m.shape) + (m.size not in (None, o.size))
                ranked.append((k in right, wrong, same.index(True), k))
        out.append(min(ranked)[-1] if ranked else None)
    return out


def _relation_truth(a: Mention, said: str, b: Mention, objects: Sequence[WorldObject]) -> str | None:
    """The true relation between the objects ``a`` and ``b`` fit, or None if no two distinct objects
    fit them. Where several pairs fit (objects sharing colour and shape), a pair for which the
    statement holds is taken, as :func:`eval.world_truth.judge` does."""
    truths = [relation(x, y) for i, x in enumerate(objects) if a.fits(x)
              for j, y in enumerate(objects) if j != i and b.fits(y)]
    if not truths:
        return None
    return said if said in truths else truths[0]


def _words(thing: Mention | WorldObject) -> str:
    return " ".join(w for w in (thing.size, thing.color, thing.shape) if w)


def _analyse_image(caption: str, extra: Mapping[str, Any], detections: Detections,
                  confusion: dict[str, dict[str, dict[str, int]]]) -> dict[str, Any]:
    """One image: adds its counts to ``confusion`` (true → said → count) and returns its record —
    detector status per object, errors with their blame, unresolved mentions and relations."""
    objects, reading = truth_objects(extra), read_caption(caption)
    status = [detector_status(o, detections) for o in objects]
    targets = resolve(reading.mentions, objects)
    for m, k in zip(reading.mentions, targets):
        if k is not None:
            o = objects[k]
            confusion["color"][o.color][m.color] += 1
            confusion["shape"][o.shape][m.shape] += 1
            if m.size is not None:
                confusion["size"][o.size][m.size] += 1
    unresolved_relations = 0
    for a, said, b in reading.relations:
        true = _relation_truth(a, said, b, objects)
        if true is None:
            unresolved_relations += 1
        else:
            confusion["relation"][true][said] += 1
    errors = [{"object": k, "true": _words(objects[k]), "said": _words(m), "kind": "wrong mention"}
              for m, k in zip(reading.mentions, targets) if k is not None and not m.fits(objects[k])]
    meant = {e["object"] for e in errors}
    named = {k for k, o in enumerate(objects)
             if any((m.color, m.shape) == (o.color, o.shape) for m in reading.mentions)}
    errors += [{"object": k, "true": _words(o), "said": None, "kind": "omitted"}
               for k, o in enumerate(objects) if k not in named | meant]
    for e in errors:
        e["detector"] = status[e["object"]]
        e["blame"] = "detector" if e["detector"] in DETECTOR_FAULTS else "captioner"
    return {"detector": status, "errors": errors,
            "unresolved_mentions": [_words(m) for m, k in zip(reading.mentions, targets) if k is None],
            "unresolved_relations": unresolved_relations}


def analyse(captions: Mapping[str, str], truth: Mapping[str, Mapping[str, Any]],
            detections: Mapping[str, Detections]) -> dict[str, Any]:
    """Error analysis of captions of demo-world images (same keys in all three mappings; ``truth``
    holds each manifest entry's ``extra``). JSON-serialisable: ``confusion`` (colour, shape, size,
    relation: true → said → count, every label of the grammar present), ``summary`` (flat counts
    and shares) and ``images`` (id → the image's detector statuses, errors with their blame,
    unresolved mentions and relations)."""
    confusion = {name: {t: dict.fromkeys(labels, 0) for t in labels} for name, labels in LABELS.items()}
    images = {i: _analyse_image(caption, truth[i], detections[i], confusion) for i, caption in captions.items()}
    status = Counter(s for r in images.values() for s in r["detector"])
    errors = [e for r in images.values() for e in r["errors"]]
    kind = Counter(e["kind"] for e in errors)
    cause = Counter(e["detector"] for e in errors)  # the status of the object each error is about
    detector = cause["missed"] + cause["misclassified"]
    summary = {
        "detector/detected": status["detected"], "detector/missed": status["missed"],
        "detector/misclassified": status["misclassified"],
        "errors/omitted": kind["omitted"], "errors/wrong_mention": kind["wrong mention"],
        "errors/unresolved": sum(len(r["unresolved_mentions"]) for r in images.values()),
        "errors/detector": detector, "errors/detector_missed": cause["missed"],
        "errors/detector_misclassified": cause["misclassified"], "errors/captioner": cause["detected"],
        "errors/detector_share": detector / len(errors) if errors else float("nan"),
        "relations/unresolved": sum(r["unresolved_relations"] for r in images.values()),
    }
    return {"confusion": confusion, "summary": summary, "images": images}


TITLES = {"color": "Colour", "shape": "Shape", "size": "Size (where said)", "relation": "Relation (both objects found)"}
_RIGHT = " class='right'"


def _table(css: str, caption: str, header: Sequence[str], rows: Sequence[tuple[str, Sequence[Any]]],
           marked: Sequence[tuple[int, int]] = ()) -> str:
    """An HTML table, every text escaped; ``marked`` cells (row, column) get class ``right``."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        f"<tr><th>{html.escape(name)}</th>"
        + "".join(f"<td{_RIGHT if (r, c) in marked else ''}>{html.escape(str(v))}</td>" for c, v in enumerate(values))
        + "</tr>"
        for r, (name, values) in enumerate(rows))
    return f"<table class='{css}'><caption>{html.escape(caption)}</caption><tr>{head}</tr>{body}</table>"


def html_tables(analysis: Mapping[str, Any]) -> str:
    """The confusion tables (rows: the truth, columns: what the caption said; the diagonal, of
    class ``right``, is correct) and the attribution counts, as an HTML fragment."""
    parts = []
    for name, matrix in analysis["confusion"].items():
        labels = list(matrix)
        parts.append(_table("confusion", f"{TITLES.get(name, name)}: true ↓ said →", ["", *labels],
                            [(t, [matrix[t][s] for s in labels]) for t in labels],
                            marked=[(k, k) for k in range(len(labels))]))
    s = analysis["summary"]
    parts.append(_table("attribution", "Ground-truth objects, by what the detector made of them", ["", "objects"],
                        [(status, [s[f"detector/{status}"]]) for status in ("detected", "misclassified", "missed")]))
    share = s["errors/detector_share"]
    blamed = "" if math.isnan(share) else f"; the detector's share of them: {share:.2f}"
    parts.append(_table("attribution", f"Caption errors (an object omitted or mentioned wrongly), by cause{blamed}",
                        ["", "errors"],
                        [("detector: object missed", [s["errors/detector_missed"]]),
                         ("detector: object misclassified", [s["errors/detector_misclassified"]]),
                         ("captioner: object detected", [s["errors/captioner"]]),
                         ("objects omitted", [s["errors/omitted"]]),
                         ("wrong mentions", [s["errors/wrong_mention"]]),
                         ("wrong mentions no object explains (not blamed)", [s["errors/unresolved"]]),
                         ("stated relations whose objects are not both in the image", [s["relations/unresolved"]])]))
    return "\n".join(parts)
