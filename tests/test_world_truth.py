"""Reading demo-world captions back and judging them against the generated ground truth."""
import random

from eval.world_truth import world_scores
from world.config import WorldConfig
from world.generate import _place_objects
from world.grammar import COLORS, SCENES, Mention, make_captions, read_caption


def _world(n=60):
    images = {}
    for i in range(n):
        rng = random.Random(i)
        scene, objects = rng.choice(SCENES), _place_objects(rng, WorldConfig())
        truth = {"scene": scene, "objects": [{"shape": o.shape, "color": o.color, "size": o.size, "box": list(o.box)}
                                             for o in objects]}
        images[str(i)] = (make_captions(objects, scene, rng), truth)
    return images


def test_reads_scene_mentions_and_relations():
    reading = read_caption("a small red circle to the left of a large blue star on the beach")
    assert reading.scene == "beach"
    assert reading.mentions == [Mention("red", "circle", "small"), Mention("blue", "star", "large")]
    assert reading.relations == [(Mention("red", "circle", "small"), "to the left of", Mention("blue", "star", "large"))]


def test_every_reference_caption_is_judged_right():
    world = _world()
    truth = {i: t for i, (_, t) in world.items()}
    for k in range(5):  # each of the five caption styles
        scores, _ = world_scores({i: caps[k] for i, (caps, _) in world.items()}, truth)
        assert scores["world/scene_accuracy"] == 1.0 and scores["world/object_precision"] == 1.0
        if scores["world/relations_stated"]:
            assert scores["world/relation_accuracy"] == 1.0
    full_listing, _ = world_scores({i: caps[0] for i, (caps, _) in world.items()}, truth)
    assert full_listing["world/object_recall"] == 1.0


def test_wrong_captions_lose_what_they_get_wrong():
    world = _world()
    truth = {i: t for i, (_, t) in world.items()}
    flips = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below", "below": "above"}
    relations = {}
    for i, (caps, _) in world.items():
        caption = caps[1]
        for old, new in flips.items():
            if old in caption:
                caption = caption.replace(old, new)
                break
        relations[i] = caption
    # near 0, not 0: where two objects share colour and shape, some pair may still fit the flip
    assert world_scores(relations, truth)[0]["world/relation_accuracy"] < 0.1
    other_scene = {i: caps[0].replace(t["scene"], next(s for s in SCENES if s != t["scene"]))
                   for i, (caps, t) in world.items()}
    assert world_scores(other_scene, truth)[0]["world/scene_accuracy"] == 0.0
    recolored = {}
    for i, (caps, t) in world.items():
        present = {o["color"] for o in t["objects"]}
        absent = next(c for c in COLORS if c not in present)
        recolored[i] = caps[0].replace(t["objects"][0]["color"], absent)
    scores, per_image = world_scores(recolored, truth)
    assert scores["world/object_precision"] < 1.0 and scores["world/object_recall"] < 1.0
    assert all(c["mentions_right"] < c["mentions"] for c in per_image.values())
