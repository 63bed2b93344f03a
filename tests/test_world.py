import json
import random

from world.config import WorldConfig
from world.generate import generate_world
from world.grammar import SCENES, WorldObject, make_captions, relation


def test_world_is_deterministic_and_split(tmp_path):
    cfg = WorldConfig(n_train=6, n_val=2, n_test=2, seed=3)
    a = json.loads(generate_world(cfg, tmp_path / "a").read_text())
    b = json.loads(generate_world(cfg, tmp_path / "b").read_text())
    assert a == b
    assert (tmp_path / "a/images/000000.png").read_bytes() == (tmp_path / "b/images/000000.png").read_bytes()
    assert [e["split"] for e in a["images"]] == ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    other = json.loads(generate_world(WorldConfig(n_train=6, n_val=2, n_test=2, seed=4), tmp_path / "c").read_text())
    assert other != a


def test_entries_carry_karpathy_fields_and_truth(tmp_path):
    data = json.loads(generate_world(WorldConfig(n_train=5, n_val=0, n_test=0), tmp_path).read_text())
    for entry in data["images"]:
        assert {"filepath", "filename", "imgid", "split", "sentids", "sentences"} <= set(entry)
        assert len(entry["sentences"]) == 5 and entry["scene"] in SCENES
        assert 1 <= len(entry["objects"]) <= 4
        for sentence in entry["sentences"]:
            assert entry["scene"] in sentence["raw"]  # every caption names the scene
        for obj in entry["objects"]:
            x0, y0, x1, y1 = obj["box"]
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
            assert any(obj["color"] in s["raw"] and obj["shape"] in s["raw"] for s in entry["sentences"])


def test_relations_follow_geometry():
    left = WorldObject("circle", "red", "small", (0, 50, 10, 60))
    right = WorldObject("square", "blue", "large", (90, 45, 120, 75))
    top = WorldObject("star", "green", "small", (52, 0, 62, 10))
    assert relation(left, right) == "to the left of" and relation(right, left) == "to the right of"
    assert relation(top, WorldObject("star", "red", "small", (50, 100, 60, 110))) == "above"
    captions = make_captions([left, right], "beach", random.Random(0))
    assert any("to the left of" in c or "to the right of" in c for c in captions)
    assert any("small" in c and "large" in c for c in captions)
