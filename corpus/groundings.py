"""Phrase groundings of a data set's captions: each mention of an object, as word spans with the
boxes it names (the grounding loss's targets). The demo world's manifest carries what they are
made from (each image's objects, from its ground truth); a data set with phrase-box annotations
(Flickr30k Entities) would supply them in the same form."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from corpus.datasets import manifest_images
from world.grammar import ground_caption

Grounding = tuple[int, int, list[list[int]]]  # (first word, end word, boxes), over caption.split()


def has_groundings(image: dict[str, Any]) -> bool:
    """Whether a manifest entry carries what :func:`phrase_groundings` reads."""
    return "objects" in image.get("extra", {})


def phrase_groundings(manifest_file: Path, indices: list[int]) -> Iterator[list[list[Grounding]]]:
    """The groundings of every caption of the images at ``indices`` (ascending manifest indices),
    image by image: the manifest is read again, so only one image's phrases exist at a time."""
    wanted = set(indices)
    for index, image in enumerate(manifest_images(manifest_file)):
        if index not in wanted:
            continue
        if not has_groundings(image):
            raise ValueError(f"train.loss.grounding_weight: image {image['id']} has no phrase groundings "
                             "(only the demo world's images have them: set the weight to 0)")
        yield [ground_caption(c, image["extra"]["objects"]) for c in image["captions"]]
