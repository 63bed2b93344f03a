"""Stage `report`: results/report/index.html (+ PNGs) for the first `report.n_images` images of
the evaluation split, with the evaluate stage's error analysis where it made one — see
eval/report.py for what it shows."""
import dataclasses
import json

from eval.report import ReportItem, explain, write_report
from pipeline.app import load_manifest, run_main, start
from pipeline.datasets import image_paths
from pipeline.model_inputs import open_features, split_indices, text_encoder
from pipeline.paths import CAPTIONER, CAPTIONS, ERROR_ANALYSIS, REPORT
from pipeline.runtime import device_of
from train.data import Images, collate
from train.decode import SEARCHES, decode
from train.model import load_captioner


def main() -> None:
    params = start()
    manifest = load_manifest()
    model, config = load_captioner(CAPTIONER)
    device = device_of(params.store.device)
    model.to(device)
    features = open_features(params, manifest, with_tokens=model.clip_tail is not None,
                             with_region_clip=model.cfg.reads_region_clip)
    indices = split_indices(manifest, params.evaluate.split, features, params.report.n_images)
    dataset = Images(features, indices)
    batch = {k: v.to(device) for k, v in collate(dataset.__getitems__(list(range(len(indices))))).items()}
    explanations = explain(model, batch, config["scene_words"], config["object_words"], params.report.top_keywords)
    rerank = params.evaluate.decode.rerank  # CLIP re-ranking picks among beams: not for greedy
    encode = text_encoder(params, device) if rerank == "clip" else None
    captions = {m: decode(model, batch, dataclasses.replace(params.evaluate.decode, method=m,
                                                            rerank=rerank if m != "greedy" else "none"), encode)
                for m in SEARCHES}
    evaluated = {r["id"]: r for r in json.loads(CAPTIONS.read_text())}
    boxes, counts = (features.readers["regions"].rows(indices, name) for name in ("boxes", "counts"))
    keywords = features.readers["region_keywords"].rows(indices, "ids")
    scored = params.evaluate.decode.method
    items = []
    for k, (index, path) in enumerate(zip(indices, image_paths(manifest, [manifest["images"][i] for i in indices]))):
        entry, n = manifest["images"][index], int(counts[k])
        labels = [config["object_words"][i] if i >= 0 else "region" for i in keywords[k][:n, 0].tolist()]
        scores = evaluated.get(entry["id"], {}).get("scores", {})
        items.append(ReportItem(entry["id"], path, boxes[k][:n].astype(float), labels, explanations[k],
                                {m: captions[m][k] for m in SEARCHES}, entry["captions"],
                                {f"{name} ({scored})": value for name, value in scores.items()}))
    analysis = json.loads(ERROR_ANALYSIS.read_text()) if ERROR_ANALYSIS.exists() else {}
    page = write_report(items, REPORT, params.report.image_px, f"graphcap report: {len(items)} "
                        f"{params.evaluate.split} images",
                        analysis if "confusion" in analysis else None)  # not the stub of a data set without truth
    print(f"report: {page.resolve().as_uri()}")


if __name__ == "__main__":
    run_main(main)
