"""Evaluating a trained captioner on a split, as the evaluate stage and the studies' cells do:
captions, the COCO metrics, CLIPScore, the demo world's figures and the error analysis."""
from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np

from corpus.datasets import scorable
from eval.clipscore import clip_scores
from eval.error_analysis import Detections, analyse
from eval.metrics import cider, coco_scores, spice_unavailable_reason
from eval.relation_ranking import relation_ranking
from eval.world_truth import world_scores
from features.detection import load_class_names
from features.files import write_json
from features.store import check_provenance
from pipeline.model_inputs import open_features, split_indices, text_encoder
from pipeline.params import Params
from pipeline.provenance import expected
from pipeline.runtime import device_of
from train.data import CachedFeatures, Images
from train.decode import caption_images
from train.model import load_captioner

log = logging.getLogger(__name__)


def evaluate_captioner(params: Params, manifest: dict, folder: Path,
                       analysis_out: Path | None = None) -> tuple[dict, list[dict]]:
    """Decode ``evaluate.split`` with the model in ``folder`` and score it. Returns the metrics
    and, per image, the caption, references and per-image scores. With ``analysis_out``, also
    writes the error analysis there (a stub saying why where there is no ground truth, so the
    stage's output always exists)."""
    model, config = load_captioner(folder)
    for kind, record in expected(params).items():  # the model must have been trained on these features
        check_provenance(folder / "config.json", config["features"][kind], record)
    features = open_features(params, manifest, with_tokens=model.clip_tail is not None,
                             with_region_clip=model.cfg.reads_region_clip)
    images = manifest["images"]
    indices = split_indices(manifest, params.evaluate.split, features)
    device = device_of(params.store.device)
    encode = text_encoder(params, device)
    captions = caption_images(model, Images(features, indices), params.evaluate.decode, params.evaluate.batch_size,
                              device, encode)
    ids = [images[i]["id"] for i in indices]
    references = {images[i]["id"]: images[i]["raw"] for i in indices}  # as the COCO server: raw, PTB-tokenized
    captions = [scorable(c) for c in captions]
    candidates = dict(zip(ids, captions))
    scores, per_image = coco_scores(references, candidates)
    embeddings = np.stack(features.readers["clip_image"].rows(indices, "embeddings")).astype(np.float32)
    clip_corpus, clip_per_image = clip_scores(embeddings, captions, [references[i] for i in ids], encode)
    scores.update(clip_corpus)
    per_image.update({name: dict(zip(ids, values.tolist())) for name, values in clip_per_image.items()})
    truth = {images[i]["id"]: images[i].get("extra", {}) for i in indices}
    world = all("objects" in t for t in truth.values())  # the demo world: judge captions against what is shown
    if world:
        scores.update(world_scores(candidates, truth)[0])
        scores.update(relation_ranking(model, Images(features, indices), [truth[i] for i in ids],
                                       params.evaluate.batch_size, params.train.max_tokens, device))
    if analysis_out is not None:
        analysis = (analyse(candidates, truth, dict(zip(ids, detections(params, features, indices)))) if world
                    else {"unavailable": "no ground-truth objects in the manifest (the demo world has them)"})
        write_json(analysis_out, analysis)  # its counters stay there: metrics.json is the one short table
    shuffled = random.Random(0).sample(captions, len(captions))  # chance: captions of other images
    metrics = {**scores, "CIDEr_shuffled_captions": cider(references, dict(zip(ids, shuffled))),
               "n_images": len(ids), "split": params.evaluate.split, "decode": params.evaluate.decode.method}
    reason = spice_unavailable_reason()
    if reason:  # the reason is logged; the metrics table keeps a short cell
        log.warning("SPICE unavailable: %s", reason)
        metrics["SPICE"] = "unavailable"
    return metrics, [{"id": i, "caption": candidates[i], "references": references[i],
                      "scores": {name: values[i] for name, values in per_image.items()}} for i in ids]


def coco_results(records: list[dict]) -> list[dict]:
    """Captions in the form the COCO caption evaluation server and pycocotools' ``COCO.loadRes``
    read: ``[{"image_id": int, "caption": str}]``, the COCO id where the data set has one (a
    numeric id), else the manifest's id as it is."""
    return [{"image_id": int(r["id"]) if r["id"].isdigit() else r["id"], "caption": r["caption"]} for r in records]


def detections(params: Params, features: CachedFeatures, indices: list[int]) -> list[Detections]:
    """The regions the captioner was given, per image: boxes (n, 4) in pixels and class names."""
    names = load_class_names(params.regions.classes)
    regions = features.readers["regions"]
    boxes, labels, counts = (regions.rows(indices, name) for name in ("boxes", "labels", "counts"))
    return [(b[:int(n)], [names[k] for k in label_ids[:int(n)].tolist()])
            for b, label_ids, n in zip(boxes, labels, counts)]
