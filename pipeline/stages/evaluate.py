"""Stage `evaluate`: decode the test split with the trained captioner; pycocoevalcap metrics,
CLIPScore / RefCLIPScore and (on the demo world) the ground-truth judge into results/metrics.json,
captions and per-image scores into results/captions.json."""
import random
from pathlib import Path

import numpy as np

from eval.clipscore import clip_scores
from eval.metrics import cider, coco_scores, spice_unavailable_reason
from eval.world_truth import world_scores
from features.store import check_provenance
from pipeline.params import Params
from pipeline.provenance import expected
from pipeline.runtime import device_of
from pipeline.stages.common import load_manifest, open_features, split_indices, start, text_encoder, write_json
from pipeline.stages.train import OUT
from train.data import Images
from train.decode import caption_images
from train.model import load_captioner


def main() -> None:
    params = start()
    metrics, records = evaluate_captioner(params, load_manifest(), OUT)
    write_json(Path("results/metrics.json"), metrics)
    write_json(Path("results/captions.json"), records)
    print_table(metrics)


def evaluate_captioner(params: Params, manifest: dict, folder: Path) -> tuple[dict, list[dict]]:
    """Decode ``evaluate.split`` with the model in ``folder`` and score it. Returns the metrics
    and, per image, the caption, references and per-image scores."""
    model, config = load_captioner(folder)
    for kind, record in expected(params).items():  # the model must have been trained on these features
        check_provenance(folder / "config.json", config["features"][kind], record)
    features = open_features(params, manifest, with_tokens=model.clip_tail is not None)
    images = manifest["images"]
    indices = split_indices(manifest, params.evaluate.split, features)
    device = device_of(params.store.device)
    encode = text_encoder(params, device)
    captions = caption_images(model, Images(features, indices), params.evaluate.decode, params.evaluate.batch_size,
                              device, encode)
    ids = [images[i]["id"] for i in indices]
    references = {images[i]["id"]: images[i]["captions"] for i in indices}
    candidates = dict(zip(ids, captions))
    scores, per_image = coco_scores(references, candidates)
    embeddings = np.stack(features.readers["clip_image"].rows(indices, "embeddings")).astype(np.float32)
    clip_corpus, clip_per_image = clip_scores(embeddings, captions, [references[i] for i in ids], encode)
    scores.update(clip_corpus)
    per_image.update({name: dict(zip(ids, values.tolist())) for name, values in clip_per_image.items()})
    truth = {images[i]["id"]: images[i].get("extra", {}) for i in indices}
    if all("objects" in t for t in truth.values()):  # the demo world: judge captions against what is shown
        scores.update(world_scores(candidates, truth)[0])
    shuffled = random.Random(0).sample(captions, len(captions))  # chance: captions of other images
    metrics = {**scores, "CIDEr_shuffled_captions": cider(references, dict(zip(ids, shuffled))),
               "n_images": len(ids), "split": params.evaluate.split, "decode": params.evaluate.decode.method}
    reason = spice_unavailable_reason()
    if reason:
        metrics["SPICE_unavailable"] = reason
    return metrics, [{"id": i, "caption": candidates[i], "references": references[i],
                      "scores": {name: values[i] for name, values in per_image.items()}} for i in ids]


def print_table(metrics: dict) -> None:
    print(f"\n{'metric':<26}{'score':>10}   ({metrics['split']} split, {metrics['n_images']} images, "
          f"{metrics['decode']} decoding; pycocoevalcap scale, papers quote ×100)")
    for name, value in metrics.items():
        if isinstance(value, float):
            print(f"{name:<26}{value:>10.4f}")
    if "SPICE_unavailable" in metrics:
        print(f"SPICE: unavailable — {metrics['SPICE_unavailable']}")


if __name__ == "__main__":
    main()
