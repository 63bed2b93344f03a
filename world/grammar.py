"""The demo world's vocabulary and caption grammar, both ways: :func:`make_captions` writes
captions, :func:`read_caption` and :func:`ground_caption` read them back.

A caption names objects as "a [size] <colour> <shape>" (a *mention*), may state one relation
"<mention> to the left of|to the right of|above|below <mention>", and names the scene.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

SHAPES = ("circle", "square", "triangle", "star")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 50, 170),
    "orange": (245, 130, 30),
}
SIZES = {"small": (16, 22), "large": (30, 40)}  # side length range in pixels at 128 px
SCENES = ("beach", "forest", "city", "snow")
SCENE_PHRASES = {"beach": "on the beach", "forest": "in the forest", "city": "in the city", "snow": "in the snow"}
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
RELATIONS = ("to the left of", "to the right of", "above", "below")  # the answers of relation()


@dataclass(frozen=True)
class WorldObject:
    shape: str
    color: str
    size: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


def world_objects(objects: Sequence[Mapping[str, Any]]) -> list[WorldObject]:
    """Objects as the data set's JSON stores them ({"shape", "color", "size", "box"})."""
    return [WorldObject(o["shape"], o["color"], o["size"], tuple(o["box"])) for o in objects]


def truth_objects(extra: Mapping[str, Any]) -> list[WorldObject]:
    """The objects of a data-set entry's ground truth (``extra["objects"]`` in the manifest)."""
    return world_objects(extra["objects"])


def relation(a: WorldObject, b: WorldObject) -> str:
    """Spatial relation of a to b along the axis where they are furthest apart."""
    (ax, ay), (bx, by) = a.center, b.center
    if abs(ax - bx) >= abs(ay - by):
        return "to the left of" if ax < bx else "to the right of"
    return "above" if ay < by else "below"


# writing

def phrase(obj: WorldObject, with_size: bool) -> str:
    """How captions name an object: "a [size] <colour> <shape>"."""
    words = ([obj.size] if with_size else []) + [obj.color, obj.shape]
    return "a " + " ".join(words)


def _listing(objects: list[WorldObject], with_size: bool) -> str:
    phrases = [phrase(o, with_size) for o in objects]
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def make_captions(objects: list[WorldObject], scene: str, rng: random.Random) -> list[str]:
    """Five varied captions: listings, a relation, the scene, counts, with and without sizes."""
    left_to_right = sorted(objects, key=lambda o: o.center[0])
    where = SCENE_PHRASES[scene]
    count = COUNT_WORDS[len(objects)]
    noun = "shape" if len(objects) == 1 else "shapes"
    a, b = rng.sample(objects, 2) if len(objects) > 1 else (objects[0], None)
    if b is not None:
        rel = f"{phrase(a, True)} {relation(a, b)} {phrase(b, True)}"
        rel_plain = f"{phrase(a, False)} {relation(a, b)} {phrase(b, False)}"
    else:
        rel, rel_plain = f"{phrase(a, True)} alone", f"{phrase(a, False)} by itself"
    shuffled = rng.sample(objects, len(objects))
    return [
        f"{_listing(left_to_right, with_size=True)} {where}",
        f"{rel} {where}",
        f"a {scene} scene with {_listing(shuffled, with_size=False)}",
        f"{count} {noun} {where}: {_listing(left_to_right, with_size=False)}",
        f"{where} there is {rel_plain}",
    ]


# reading

_MENTION = rf"(?:(?P<{{p}}size>{'|'.join(SIZES)}) )?(?P<{{p}}color>{'|'.join(COLORS)}) (?P<{{p}}shape>{'|'.join(SHAPES)})"
MENTION = re.compile(r"\b" + _MENTION.format(p=""))
RELATION = re.compile(r"\b" + _MENTION.format(p="a_") + rf" (?P<rel>{'|'.join(RELATIONS)}) (?:an? )?"
                      + _MENTION.format(p="b_"))
SCENE = re.compile(rf"\b({'|'.join(SCENES)})\b")


@dataclass(frozen=True)
class Mention:
    """An object as a caption names it; no size said fits either size."""

    color: str
    shape: str
    size: str | None = None

    def fits(self, obj: WorldObject) -> bool:
        return (obj.color, obj.shape) == (self.color, self.shape) and self.size in (None, obj.size)


@dataclass(frozen=True)
class Reading:
    """What a caption claims."""

    scene: str | None
    mentions: list[Mention]
    relations: list[tuple[Mention, str, Mention]]


def read_caption(caption: str) -> Reading:
    text = caption.lower()
    scene = SCENE.search(text)
    mentions = [Mention(m["color"], m["shape"], m["size"]) for m in MENTION.finditer(text)]
    relations = [(Mention(m["a_color"], m["a_shape"], m["a_size"]), m["rel"],
                  Mention(m["b_color"], m["b_shape"], m["b_size"])) for m in RELATION.finditer(text)]
    return Reading(scene[1] if scene else None, mentions, relations)


def ground_caption(caption: str, objects: Sequence[Mapping[str, Any]]) -> list[tuple[int, int, list[list[int]]]]:
    """Phrase groundings of a (normalised) caption against an image's objects, in the manner
    of Flickr30k Entities: each mention, its article included (as Entities' phrases include
    theirs), as (first word, end word, boxes of the image's objects it fits), word indices over
    ``caption.split()``. A mention that fits several objects (two red circles, no size said) is
    grounded to all of them."""
    objects, words, phrases = world_objects(objects), caption.split(), []
    text = " ".join(words)
    starts = {m.start(): m for m in MENTION.finditer(text) if text[m.end():m.end() + 1] in ("", " ")}  # whole words
    position = 0  # character offset of word k in ``text``
    for k, word in enumerate(words):
        if (m := starts.get(position)) is not None:
            mention = Mention(m["color"], m["shape"], m["size"])
            end = k + 2 + (m["size"] is not None)
            boxes = [list(o.box) for o in objects if mention.fits(o)]
            phrases.append((k - (k > 0 and words[k - 1] in ("a", "an")), end, boxes))
        position += len(word) + 1
    return phrases
