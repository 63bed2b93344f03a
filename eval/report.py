"""The visual report: one static HTML page (and a PNG per image) showing, for a sample of test
images, what the captioner saw and said — detected boxes, the KNN graph, GAT attention per node,
the top global (scene) keywords, the gated local keywords, the caption of each decoding, the
references and per-image scores; on the demo world it opens with the error analysis of the whole
split (eval/error_analysis.py). Self-contained: no script, font or style from the network.
"""
from __future__ import annotations

import dataclasses
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image, ImageDraw

from eval.error_analysis import html_tables
from features.images import load_rgb, original_size
from train.config import DecodeConfig
from train.data import Batch, CachedFeatures, Images, collate
from train.decode import SEARCHES, TextEncoder, decode
from train.model import Captioner


@dataclass
class Explanation:
    """What the model computed for one image, in plain numbers."""

    node_attention: np.ndarray  # (n,) attention each region receives in the last GAT layer (mean over heads)
    edges: list[tuple[int, int, float]]  # (source, target, attention), self-loops left out
    scene: list[tuple[str, float]]  # top global keywords with their softmax weight
    local: list[tuple[str, float]]  # the image's region keywords with their pooling weight (graph: the nodes' attention)
    gate: float | None  # mean local gate activation (None without local guidance)


@dataclass
class ReportItem:
    id: str
    image: Path
    boxes: np.ndarray  # (n, 4) in original pixels
    labels: list[str]  # one per box
    explanation: Explanation
    captions: dict[str, str]  # decoding → caption
    references: list[str]
    scores: dict[str, float] = field(default_factory=dict)


@torch.no_grad()
def explain(model: Captioner, batch: Batch, scene_words: list[str], object_words: list[str],
            top: int) -> list[Explanation]:
    """Per image of a collated batch: GAT attention, scene attention, local keywords and gate."""
    model.eval()
    prefix = model.prefix(batch)
    counts = torch.bincount(batch.node_batch, minlength=len(batch.clip)).tolist()
    offsets = np.cumsum([0] + counts[:-1])
    alpha_src = alpha_dst = alpha = None
    if model.gat is not None:
        _, attention = model.enhanced_regions(batch, return_attention=True)
        (alpha_src, alpha_dst), alpha = attention[-1][0].tolist(), attention[-1][1].mean(dim=1).tolist()
    out = []
    for b, (n, first) in enumerate(zip(counts, offsets)):
        received, edges = np.zeros(n), []
        for s, t, a in zip(alpha_src or [], alpha_dst or [], alpha or []):
            if first <= t < first + n and s != t:
                received[t - first] += a
                edges.append((s - first, t - first, a))
        scene = _top_words(prefix.scene_attention[b], scene_words, top) if prefix.scene_attention is not None else []
        if prefix.local_attention is not None:  # model.local_text graph: the keywords the nodes attend to
            local = _top_words(prefix.local_attention[b], object_words, top)
        else:
            local = _region_keywords(batch.keyword_ids[b], batch.keyword_scores[b], object_words, top)
        gate = float(prefix.gate[b].mean()) if prefix.gate is not None else None
        out.append(Explanation(received, edges, scene, local, gate))
    return out


def _top_words(attention: torch.Tensor, words: list[str], top: int) -> list[tuple[str, float]]:
    """The ``top`` words of a bank by their attention weight (C,), heaviest first."""
    weights, ids = attention.topk(min(top, len(words)))
    return [(words[i], float(w)) for w, i in zip(weights.tolist(), ids.tolist())]


def _region_keywords(ids: torch.Tensor, scores: torch.Tensor, words: list[str], top: int) -> list[tuple[str, float]]:
    """An image's region keywords (N, k) summed by word over their pooling weight, heaviest first."""
    local: dict[str, float] = {}
    for i, w in zip(ids.flatten().tolist(), scores.flatten().tolist()):
        if i >= 0:
            local[words[i]] = local.get(words[i], 0.0) + max(w, 0.0)
    return sorted(local.items(), key=lambda kv: -kv[1])[:top]


def report_items(model: Captioner, config: Mapping[str, Any], features: CachedFeatures, indices: list[int],
                 images: list[Path], ids: list[str], cfg: DecodeConfig, top: int, device: torch.device | str,
                 encode: TextEncoder | None = None) -> list[ReportItem]:
    """A ReportItem (references and scores left empty) per store index: what the report stage
    shows of a test image and the demo of an upload. ``cfg``'s re-ranking picks among beams, so
    greedy decoding goes without it; ``encode`` is CLIP's text tower for ``rerank: clip``."""
    items = Images(features, indices).__getitems__(list(range(len(indices))))
    batch = collate(items).to(device)
    explanations = explain(model, batch, config["scene_words"], config["object_words"], top)
    captions = {m: decode(model, batch, dataclasses.replace(cfg, method=m, rerank=cfg.rerank if m != "greedy"
                                                            else "none"), encode) for m in SEARCHES}
    boxes, counts = (features.readers["regions"].rows(indices, name) for name in ("boxes", "counts"))
    keywords = features.readers["region_keywords"].rows(indices, "ids")
    out = []
    for k, (image_id, path) in enumerate(zip(ids, images)):
        n = int(counts[k])
        labels = [config["object_words"][i] if i >= 0 else "region" for i in keywords[k][:n, 0].tolist()]
        out.append(ReportItem(image_id, path, boxes[k][:n].astype(float), labels, explanations[k],
                              {m: captions[m][k] for m in SEARCHES}, []))
    return out


def draw(item: ReportItem, px: int) -> Image.Image:
    """The image with its boxes, KNN edges (width ~ attention) and nodes (size ~ attention). Read
    as the extractors read it (upright, any mode; a huge one at reduced size): the boxes are in
    the upright original's pixels."""
    height, width = original_size(item.image)
    scale = px / max(height, width)
    image = load_rgb(item.image, max_side=2 * px).resize((round(width * scale), round(height * scale)))
    canvas = ImageDraw.Draw(image)
    boxes = item.boxes * scale
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
    for (x0, y0, x1, y1), label in zip(boxes.tolist(), item.labels):
        canvas.rectangle((x0, y0, x1, y1), outline=(255, 255, 255), width=2)
        corner = (x0 + 2, y0 + 1)  # the label on a dark patch: legible on any photo, over other boxes too
        canvas.rectangle(canvas.textbbox(corner, label), fill=(0, 0, 0))
        canvas.text(corner, label, fill=(255, 255, 0))
    for s, t, a in item.explanation.edges:
        canvas.line([tuple(centres[s]), tuple(centres[t])], fill=(0, 255, 255), width=max(1, round(4 * a)))
    attention = item.explanation.node_attention
    peak = attention.max() if len(attention) and attention.max() > 0 else 1.0
    for (x, y), a in zip(centres.tolist(), attention.tolist()):
        r = 3 + 6 * a / peak
        canvas.ellipse((x - r, y - r, x + r, y + r), fill=(255, 60, 60), outline=(0, 0, 0))
    return image


def _pairs(values: list[tuple[str, float]]) -> str:
    return ", ".join(f"{html.escape(w)} <small>{v:.2f}</small>" for w, v in values) or "–"


def section(item: ReportItem, picture: str) -> str:
    """One image's block: its drawing (``picture``: a URL) beside its :func:`details`."""
    return f"""<section id="img-{html.escape(item.id)}">
<h2>{html.escape(item.id)}</h2>
<img src="{picture}" alt="image {html.escape(item.id)} with boxes and graph">
{details(item)}
</section>"""


def details(item: ReportItem) -> str:
    """What the model made of one image: the caption of each decoding, the keywords with the gate,
    the regions and, for an image of a data set, its scores and references."""
    e = item.explanation
    captions = "".join(f"<tr><th>{html.escape(k)}</th><td class='caption'>{html.escape(v)}</td></tr>"
                       for k, v in item.captions.items())
    scores = " · ".join(f"{html.escape(k)} {v:.3f}" for k, v in item.scores.items())
    refs = "".join(f"<li>{html.escape(r)}</li>" for r in item.references)
    gate = "–" if e.gate is None else f"{e.gate:.2f}"
    return f"""<div class="details"><table>{captions}</table>
<p><b>Global keywords:</b> {_pairs(e.scene)}</p>
<p><b>Local keywords:</b> {_pairs(e.local)} (mean gate {gate})</p>
<p><b>Regions:</b> {len(item.labels)}, graph edges {len(e.edges)}</p>
{f"<p><b>Scores:</b> {scores}</p>" if scores else ""}
{f"<p><b>References:</b></p><ul>{refs}</ul>" if refs else ""}</div>"""


STYLE = """body{font-family:sans-serif;margin:2em;background:#fafafa}
section{display:flex;gap:1.5em;margin-bottom:2em;padding:1em;background:#fff;border:1px solid #ddd}
section h2{position:absolute;margin-top:-1.4em;font-size:1em;color:#666}
img{flex:none}td.caption{font-size:1.1em}th{text-align:left;padding-right:1em;color:#555}
#error-analysis{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start;margin-bottom:2em}
#error-analysis h2{flex-basis:100%;margin:0}#error-analysis caption{text-align:left;font-weight:bold}
#error-analysis td{text-align:right;padding:0 .4em}#error-analysis td.right{background:#dff0d8}
#overview{display:flex;flex-wrap:wrap;gap:3em;margin-bottom:1em}#overview caption{text-align:left;font-weight:bold}
figure.curve{margin:0}"""

LEGEND = ("Boxes: detected regions (label = first local keyword). Cyan lines: KNN graph edges, width ∝ last-layer "
          "GAT attention. Red dots: attention each region receives. Mean gate: how much of the local keywords' text "
          "embedding the local guidance lets through (eq. 12's sigmoid gate, averaged over its dimensions): 0 ignores "
          "them, 1 passes them whole.")

# filled in by the browser once every picture has decoded: what the headless-browser test reads
CHECK = """<script>window.addEventListener('load',()=>{const i=[...document.images];
document.body.dataset.imagesLoaded=i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length;});</script>"""


def overview(facts: Mapping[str, str], metrics: Mapping[str, float], curves: str = "") -> str:
    """The first screen: what made the report (model, data set, split, decoding), its headline
    figures (pycocoevalcap's scale; the world/* ones are the demo world's ground-truth judge) and
    ``curves`` (:func:`curve_svg`)."""
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts.items())
    figures = "".join(f"<tr><th>{html.escape(k)}</th><td>{v:.3f}</td></tr>" for k, v in metrics.items()
                      if isinstance(v, (int, float)))
    return f"""<div id="overview"><table><caption>What made this report</caption>{rows}</table>
<table><caption>Headline figures (whole split)</caption>{figures}</table>{curves}</div>"""


def curve_svg(name: str, points: list[tuple[float, float]], width: int = 320, height: int = 140) -> str:
    """One training curve as an inline SVG line chart (no script, nothing fetched: the page stays
    offline), its first and last value and its range written beside it."""
    if not points:
        return ""
    xs, ys = zip(*points)
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    pad = 24

    def at(x: float, y: float) -> str:
        px = pad + (x - x0) / ((x1 - x0) or 1) * (width - 2 * pad)
        py = height - pad - (y - y0) / ((y1 - y0) or 1) * (height - 2 * pad)
        return f"{px:.1f},{py:.1f}"

    line = " ".join(at(x, y) for x, y in points)
    return (f'<figure class="curve"><svg width="{width}" height="{height}" role="img" aria-label="{html.escape(name)}">'
            f'<rect x="{pad}" y="{pad}" width="{width - 2 * pad}" height="{height - 2 * pad}" fill="#fff" stroke="#ccc"/>'
            f'<polyline points="{line}" fill="none" stroke="#36c" stroke-width="2"/>'
            f'<text x="{pad}" y="{height - 6}" font-size="11">epoch {x0:g}</text>'
            f'<text x="{width - pad}" y="{height - 6}" font-size="11" text-anchor="end">{x1:g}</text></svg>'
            f"<figcaption>{html.escape(name)}: {ys[0]:.3f} → {ys[-1]:.3f} (range {y0:.3f}–{y1:.3f})</figcaption></figure>")


def _error_analysis(analysis: Mapping[str, Any] | None) -> str:
    """The error analysis block (a div: sections are the images), or nothing without one."""
    if analysis is None:
        return ""
    return f"""<div id="error-analysis"><h2>Caption errors against the ground truth (whole split)</h2>
{html_tables(analysis)}</div>"""


def write_report(items: list[ReportItem], folder: Path, px: int, title: str,
                 analysis: Mapping[str, Any] | None = None, first_screen: str = "") -> Path:
    """folder/index.html plus folder/images/<id>.png; returns the page. ``first_screen``: HTML
    shown first (:func:`overview`); ``analysis``: what :func:`eval.error_analysis.analyse`
    returned, shown before the images."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    sections = []
    for item in items:
        picture = f"images/{item.id}.png"
        draw(item, px).save(folder / picture)
        sections.append(section(item, picture))
    page = folder / "index.html"
    page.write_text(f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style>{CHECK}</head><body><h1>{html.escape(title)}</h1>
{first_screen}<p>{LEGEND}</p>
{_error_analysis(analysis)}{''.join(sections)}</body></html>
""", encoding="utf-8")
    return page
