"""The visual report: built from a real model's attention and keywords, rendered by a real
headless browser (Debian's chromium), offline."""
import re
import subprocess

import numpy as np
import pytest
from PIL import Image

from eval.report import ReportItem, curve_svg, explain, overview, write_report
from tests.helpers import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    OBJECTS,
    SCENES,
    synthetic_items,
    tiny_captioner,
)
from train.data import collate


@pytest.fixture
def report(tiny_language, tmp_path):
    model = tiny_captioner(tiny_language)
    items = synthetic_items(n=3)
    explanations = explain(model, collate(items), [f"scene{i}" for i in range(SCENES)],
                           [f"object <{i}>" for i in range(OBJECTS)], top=3)
    report_items = []
    for k, (item, e) in enumerate(zip(items, explanations)):
        n = len(item["features"])
        path = tmp_path / f"photo {k}.png"
        Image.new("RGB", (160, 120), (30 * k, 120, 200)).save(path)
        boxes = np.array([[10 + 5 * j, 10, 60 + 5 * j, 70] for j in range(n)], float)
        report_items.append(ReportItem(f"im{k}", path, boxes, [f"r{j}" for j in range(n)], e,
                                       {"greedy": "a red <circle> & co", "beam": "a red circle"}, ["ref one"],
                                       {"CIDEr (hybrid)": 1.5}))
    return write_report(report_items, tmp_path / "report", 200, "test report"), explanations


def test_explanations_come_from_the_model(report):
    _, explanations = report
    e = explanations[0]
    assert len(e.node_attention) == 4 and (e.node_attention > 0).all()  # 4 regions, each attended to
    assert all(0 <= s < 4 and 0 <= t < 4 and s != t for s, t, _ in e.edges)
    assert len(e.scene) == 3 and sum(w for _, w in e.scene) <= 1 + 1e-6
    assert e.gate is not None and 0 < e.gate < 1


def test_graph_keywords_explained_by_the_nodes_attention(tiny_language):
    model = tiny_captioner(tiny_language, local_text="graph")
    batch = collate(synthetic_items(n=2))
    words = [f"object <{i}>" for i in range(OBJECTS)]
    e = explain(model, batch, [f"scene{i}" for i in range(SCENES)], words, top=3)[0]
    attention = model.prefix(batch).local_attention[0]
    assert [w for w, _ in e.local] == [words[i] for i in attention.topk(3).indices.tolist()]  # not the stored ids


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_report_renders_offline_in_a_headless_browser(report, tmp_path):
    page, _ = report
    assert sorted(p.name for p in (page.parent / "images").iterdir()) == ["im0.png", "im1.png", "im2.png"]
    browser = [CHROMIUM, *CHROMIUM_FLAGS, "--virtual-time-budget=5000"]
    dom = subprocess.run(browser + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert 'data-images-loaded="3/3"' in dom  # every picture decoded, from local files only
    assert "a red &lt;circle&gt; &amp; co" in dom and "object &lt;" in dom  # text is escaped, not markup
    assert re.search(r"CIDEr \(hybrid\) 1\.500", dom)
    shot = tmp_path / "shot.png"
    subprocess.run(browser + ["--window-size=1000,800", f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.std() > 10  # something was drawn, not a blank page


def test_the_first_screen_says_what_made_the_report_and_its_headline_figures(report, tmp_path):
    page, _ = report
    items_page = page.read_text()
    facts = {"model": "models/captioner", "data set": "demo_world", "split": "test", "decoding": "beam, beam 5"}
    first = overview(facts, {"CIDEr": 4.5239, "BLEU-4": 0.9359})
    assert "<th>decoding</th><td>beam, beam 5</td>" in first and "<th>CIDEr</th><td>4.524</td>" in first
    html_page = write_report([], tmp_path / "r", 100, "t", first_screen=first).read_text()
    assert html_page.index('id="overview"') < html_page.index("Mean gate")  # first, then the legend's gate line
    assert "Mean gate" in items_page
    curve = curve_svg("validation CIDEr", [(0, 0.37), (1, 0.43), (2, 0.41)])
    assert "<polyline points=" in curve and "validation CIDEr: 0.370 → 0.410 (range 0.370–0.430)" in curve
    assert "http" not in curve.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing fetched
    assert curve_svg("empty", []) == ""
