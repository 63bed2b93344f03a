"""Stage `report`: results/report/index.html (+ PNGs) for the first `report.n_images` images of
the evaluation split, with the evaluate stage's error analysis where it made one — see
eval/report.py for what it shows."""
import json

from corpus.datasets import image_paths
from eval.report import curve_svg, overview, report_items, write_report
from pipeline.app import load_manifest, run_main, start
from pipeline.model_inputs import open_features, split_indices, text_encoder
from pipeline.params import Params
from pipeline.paths import CAPTIONER, CAPTIONS, ERROR_ANALYSIS, HEADLINE_METRICS, REPORT, TRAINING_LOG
from pipeline.runtime import device_of
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
    entries = [manifest["images"][i] for i in indices]
    encode = text_encoder(params, device) if params.evaluate.decode.rerank == "clip" else None
    items = report_items(model, config, features, indices, image_paths(manifest, entries), [e["id"] for e in entries],
                         params.evaluate.decode, params.report.top_keywords, device, encode)
    evaluated = {r["id"]: r for r in json.loads(CAPTIONS.read_text())}
    scored = params.evaluate.decode.method
    for item, entry in zip(items, entries):
        scores = evaluated.get(entry["id"], {}).get("scores", {})
        item.references = entry["captions"]
        item.scores = {f"{name} ({scored})": value for name, value in scores.items()}
    analysis = json.loads(ERROR_ANALYSIS.read_text()) if ERROR_ANALYSIS.exists() else {}
    first_screen = overview(_facts(params, manifest, config, len(items)), json.loads(HEADLINE_METRICS.read_text()),
                            _curves())
    page = write_report(items, REPORT, params.report.image_px, f"graphcap report: {len(items)} "
                        f"{params.evaluate.split} images",
                        analysis if "confusion" in analysis else None,  # not the stub of a data set without truth
                        first_screen)
    print(f"report: {page.resolve().as_uri()}")



CURVES = {"training loss": "train/loss_total.tsv", "validation CIDEr (greedy)": "val/CIDEr_greedy.tsv"}


def _curves() -> str:
    """The training curves dvclive logged, drawn into the page (a run resumed drops redone rows first)."""
    drawn = []
    for name, tsv in CURVES.items():
        path = TRAINING_LOG / "plots/metrics" / tsv
        rows = [line.split("\t") for line in path.read_text().splitlines()[1:]] if path.exists() else []
        drawn.append(curve_svg(name, [(float(step), float(value)) for step, value in rows]))
    return "".join(drawn)


def _facts(params: Params, manifest: dict, config: dict, shown: int) -> dict[str, str]:
    """What made the report, for its first screen."""
    decode = params.evaluate.decode
    beam = f", beam {decode.beam_size}" if decode.method in ("beam", "hybrid") else ""
    return {"model": f"{CAPTIONER}, trained on {config.get('dataset', '?')} (its settings: {CAPTIONER}/config.json)",
            "data set": f"{manifest['dataset']} ({params.data.dataset})",
            "split": f"{params.evaluate.split}: figures over the whole split, {shown} images shown below",
            "decoding": decode.method + beam}


if __name__ == "__main__":
    run_main(main)
