"""The error analysis on hand-made images whose confusions and blame are known, the references'
leave-one-out CIDEr, and the analysis in the report."""
import math
import random

import numpy as np
import pytest
from PIL import Image

from eval.error_analysis import analyse, detector_status, html_tables
from eval.metrics import cider, human_cider
from eval.report import Explanation, ReportItem, write_report
from world.config import WorldConfig
from world.generate import _place_objects
from world.grammar import SCENES, WorldObject, make_captions


def _obj(shape, color, size, box):
    return {"shape": shape, "color": color, "size": size, "box": list(box)}


# "a": obj 0 detected, obj 1 misclassified (detected as a circle), obj 2 missed
# "b": objs 0 and 1 detected, obj 2 misclassified (detected as a triangle)
# "c": one object, detected
TRUTH = {
    "a": {"scene": "beach", "objects": [_obj("circle", "red", "small", (10, 10, 30, 30)),
                                        _obj("square", "blue", "large", (60, 10, 95, 45)),
                                        _obj("triangle", "green", "small", (10, 80, 30, 100))]},
    "b": {"scene": "city", "objects": [_obj("star", "yellow", "large", (10, 50, 45, 85)),
                                       _obj("circle", "purple", "small", (80, 55, 100, 75)),
                                       _obj("square", "orange", "large", (50, 90, 85, 125))]},
    "c": {"scene": "beach", "objects": [_obj("circle", "green", "large", (40, 40, 75, 75))]},
}
DETECTIONS = {
    "a": (np.array([[11, 10, 31, 30], [60, 12, 95, 45], [100, 100, 120, 120]], np.float32),
          ["circle", "circle", "triangle"]),
    "b": (np.array([[10, 50, 45, 85], [80, 55, 100, 75], [52, 90, 85, 125]], np.float32),
          ["star", "circle", "triangle"]),
    "c": (np.array([[40, 40, 75, 75]], np.float32), ["circle"]),
}
CAPTIONS = {
    # a colour error on a detected object (captioner); the misclassified square is named right (no
    # error); the missed triangle is omitted (detector); the relation's first mention fits nothing
    "a": "a small blue circle to the left of a large blue square on the beach",
    # a wrong relation (the star is left of the circle); the misclassified square called a
    # triangle (detector, shape square → triangle)
    "b": "a large yellow star to the right of a small purple circle and a large orange triangle in the city",
    # a size error (captioner) and a red star that no object explains (unresolved)
    "c": "a small green circle and a red star on the beach",
}


def _off_diagonal(matrix):
    return {(t, s): n for t, row in matrix.items() for s, n in row.items() if n and s != t}


def _diagonal(matrix):
    return {t: row[t] for t, row in matrix.items() if row[t]}


def test_confusions_and_blame_of_known_errors():
    analysis = analyse(CAPTIONS, TRUTH, DETECTIONS)
    confusion = analysis["confusion"]
    assert _off_diagonal(confusion["color"]) == {("red", "blue"): 1}
    assert _diagonal(confusion["color"]) == {"blue": 1, "yellow": 1, "purple": 1, "orange": 1, "green": 1}
    assert _off_diagonal(confusion["shape"]) == {("square", "triangle"): 1}
    assert _diagonal(confusion["shape"]) == {"circle": 3, "square": 1, "star": 1}
    assert _off_diagonal(confusion["size"]) == {("large", "small"): 1}
    assert _diagonal(confusion["size"]) == {"small": 2, "large": 3}
    assert _off_diagonal(confusion["relation"]) == {("to the left of", "to the right of"): 1}
    assert _diagonal(confusion["relation"]) == {}
    assert set(confusion["color"]) == set(confusion["color"]["red"]) == {"red", "green", "blue", "yellow", "purple",
                                                                        "orange"}  # every label, zeros too
    assert analysis["summary"] == {
        "detector/detected": 4, "detector/missed": 1, "detector/misclassified": 2,
        "errors/omitted": 1, "errors/wrong_mention": 3, "errors/unresolved": 1,
        "errors/detector": 2, "errors/detector_missed": 1, "errors/detector_misclassified": 1, "errors/captioner": 2,
        "errors/detector_share": 0.5, "relations/unresolved": 1,
    }
    images = analysis["images"]
    assert images["a"]["detector"] == ["detected", "misclassified", "missed"]
    assert [(e["object"], e["kind"], e["said"], e["blame"]) for e in images["a"]["errors"]] == [
        (0, "wrong mention", "small blue circle", "captioner"), (2, "omitted", None, "detector")]
    assert [(e["object"], e["true"], e["said"], e["blame"]) for e in images["b"]["errors"]] == [
        (2, "large orange square", "large orange triangle", "detector")]
    assert images["c"]["unresolved_mentions"] == ["red star"]


def test_a_wrong_mention_means_the_object_not_otherwise_named():
    truth = {"x": {"scene": "snow", "objects": [_obj("circle", "red", "small", (0, 0, 20, 20)),
                                                 _obj("circle", "green", "small", (60, 0, 80, 20))]}}
    detections = {"x": (np.array([[0, 0, 20, 20], [60, 0, 80, 20]]), ["circle", "circle"])}
    analysis = analyse({"x": "a small red circle and a small blue circle in the snow"}, truth, detections)
    assert _off_diagonal(analysis["confusion"]["color"]) == {("green", "blue"): 1}  # not red → blue
    assert analysis["summary"]["errors/captioner"] == 1 and analysis["summary"]["errors/omitted"] == 0


def test_detector_status_at_the_iou_threshold():
    square = WorldObject("square", "red", "small", (0, 0, 10, 10))
    assert detector_status(square, (np.array([[0, 0, 10, 20]]), ["square"])) == "detected"  # IoU 0.5
    assert detector_status(square, (np.array([[0, 0, 10, 21]]), ["square"])) == "missed"  # IoU 100/210
    assert detector_status(square, (np.array([[0, 0, 10, 21], [0, 0, 10, 12]]), ["square", "star"])) == "misclassified"
    assert detector_status(square, (np.zeros((0, 4)), [])) == "missed"


def _world(n=40):
    captions, truth, detections = [], {}, {}
    for i in range(n):
        rng = random.Random(i)
        scene, objects = rng.choice(SCENES), _place_objects(rng, WorldConfig())
        captions.append(make_captions(objects, scene, rng))
        truth[str(i)] = {"scene": scene, "objects": [_obj(o.shape, o.color, o.size, o.box) for o in objects]}
        detections[str(i)] = (np.array([o.box for o in objects], float), [o.shape for o in objects])
    return captions, truth, detections


def test_reference_captions_make_no_errors():
    captions, truth, detections = _world()
    for k in range(5):
        analysis = analyse({i: caps[k] for i, caps in zip(truth, captions)}, truth, detections)
        s = analysis["summary"]
        assert s["detector/detected"] == sum(len(t["objects"]) for t in truth.values())
        assert s["errors/wrong_mention"] == s["errors/unresolved"] == s["relations/unresolved"] == 0
        for matrix in analysis["confusion"].values():
            assert _off_diagonal(matrix) == {}
        if k in (0, 2, 3):  # the listings name every object
            assert s["errors/captioner"] == s["errors/detector"] == 0
        else:  # a relation names two objects: the others are omitted, the captioner's doing
            assert s["errors/captioner"] == s["errors/omitted"] > 0 and s["errors/detector"] == 0
    relations = analyse({i: caps[1] for i, caps in zip(truth, captions)}, truth, detections)["confusion"]["relation"]
    stated = sum(" of " in c[1] or " above " in c[1] or " below " in c[1] for c in captions)
    assert sum(_diagonal(relations).values()) == stated > 0


def test_undetected_objects_put_omissions_on_the_detector():
    captions, truth, _ = _world(10)
    nothing = {i: (np.zeros((0, 4)), []) for i in truth}
    s = analyse({i: caps[1] for i, caps in zip(truth, captions)}, truth, nothing)["summary"]
    assert s["errors/captioner"] == 0 and s["errors/detector"] == s["errors/detector_missed"] == s["errors/omitted"] > 0
    assert s["errors/detector_share"] == 1.0


REFS = {
    "1": ["a red circle on the beach", "a small red circle by the sea", "the beach has a red circle"],
    "2": ["two blue squares in the snow", "blue squares on snow", "a snowy scene with two squares"],
    "3": ["a man riding a wave on a surfboard", "a surfer in the ocean", "a person surfing a big wave"],
}


def test_human_cider_is_the_mean_of_leave_one_out_cider():
    by_hand = [cider({i: r[:k] + r[k + 1:] for i, r in REFS.items()}, {i: r[k] for i, r in REFS.items()})
               for k in range(3)]
    assert human_cider(REFS) == pytest.approx(sum(by_hand) / 3)
    assert len(set(by_hand)) == 3  # the folds differ: each held-out reference was scored
    identical = {i: [r[0]] * 3 for i, r in REFS.items()}  # the references of an image agree
    disjoint = {"1": ["red circle", "blue square", "green star"], "2": ["sandy beach", "snowy field", "busy city"],
                "3": ["one dog", "two cats", "three birds"]}
    assert human_cider(identical) > human_cider(REFS) > human_cider(disjoint) == 0.0
    assert math.isnan(human_cider({"1": ["only one"], "2": ["a", "b"]}))


def test_report_shows_the_analysis(tmp_path):
    analysis = analyse(CAPTIONS, TRUTH, DETECTIONS)
    fragment = html_tables(analysis)
    assert fragment.count("<table") == 6  # colour, shape, size, relation, detector status, blame
    assert "<td class='right'>3</td>" in fragment  # circle → circle on the diagonal
    Image.new("RGB", (128, 128)).save(tmp_path / "a.png")
    item = ReportItem("a", tmp_path / "a.png", DETECTIONS["a"][0].astype(float), list(DETECTIONS["a"][1]),
                      Explanation(np.zeros(3), [], [], [], None), {"greedy": CAPTIONS["a"]}, [])
    page = write_report([item], tmp_path / "report", 128, "t", analysis).read_text()
    assert 'id="error-analysis"' in page and fragment in page
    assert page.count("<section") == 1  # the analysis is no image section
    assert 'id="error-analysis"' not in write_report([item], tmp_path / "plain", 128, "t").read_text()
