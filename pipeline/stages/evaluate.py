"""Stage `evaluate`: decode the test split with the trained captioner; pycocoevalcap metrics,
the references' own leave-one-out CIDEr, CLIPScore / RefCLIPScore and (on the demo world) the
ground-truth judge and the relation ranking into results/metrics.json, captions and per-image scores into
results/captions.json (and in the COCO server's result format, results/coco_results.json), and (on the demo world) the error analysis — confusions and detector vs
captioner blame — into results/error_analysis.json."""
from eval.metrics import headline, human_cider, spice_unavailable_reason
from features.files import write_json
from pipeline.app import load_manifest, run_main, start
from pipeline.evaluation import coco_results, evaluate_captioner
from pipeline.paths import CAPTIONER, CAPTIONS, COCO_RESULTS, ERROR_ANALYSIS, HEADLINE_METRICS, METRICS


def main() -> None:
    params = start()
    metrics, records = evaluate_captioner(params, load_manifest(), CAPTIONER, ERROR_ANALYSIS)
    # a property of the data set, not of the model: here, not in every ablation cell
    metrics["CIDEr_human"] = human_cider({r["id"]: r["references"] for r in records})
    write_json(METRICS, metrics)
    write_json(HEADLINE_METRICS, headline(metrics))
    write_json(CAPTIONS, records)
    write_json(COCO_RESULTS, coco_results(records))
    print_table(metrics)


def print_table(metrics: dict) -> None:
    print(f"\n{'metric':<26}{'score':>10}   ({metrics['split']} split, {metrics['n_images']} images, "
          f"{metrics['decode']} decoding; pycocoevalcap scale, papers quote ×100)")
    for name, value in metrics.items():
        if isinstance(value, float):
            print(f"{name:<26}{value:>10.4f}")
    if metrics.get("SPICE") == "unavailable":
        print(f"SPICE: unavailable — {spice_unavailable_reason()}")


if __name__ == "__main__":
    run_main(main)
