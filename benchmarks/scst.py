"""What does self-critical training add to the cross-entropy model? For each seed, the main model
as params.yaml configures it (cross-entropy only, ``train.scst_epochs`` 0) and the same followed by
``--scst-epochs`` SCST epochs (``train.scst_reward``, baseline, samples and rate as configured) are
trained and evaluated on the evaluate stage's split as that stage does, side by side in one run;
prints mean ± std over the seeds and writes benchmarks/results/scst.json.

    python benchmarks/scst.py [--seeds 0 1 2] [--scst-epochs 2]

Run after `dvc repro` (it reads the main job's feature store). Each run trains in a temporary
folder; on the demo world a seed costs about two main-model trainings.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.app import load_manifest  # noqa: E402
from pipeline.evaluation import evaluate_captioner  # noqa: E402
from pipeline.params import Params, load_params  # noqa: E402
from pipeline.paths import MANIFEST  # noqa: E402
from pipeline.training import train_captioner  # noqa: E402

KEYS = ("CIDEr", "BLEU-4", "world/object_precision", "world/object_recall", "world/relation_accuracy",
        "world/relation_ranking", "CLIPScore")
OUT = ROOT / "benchmarks/results/scst.json"


def trained_and_scored(params: Params, manifest: dict, seed: int, scst_epochs: int, work: Path) -> dict:
    """Test metrics of the main model trained with ``seed`` and ``scst_epochs`` SCST epochs."""
    train = dataclasses.replace(params.train, seed=seed, scst_epochs=scst_epochs)
    cell = dataclasses.replace(params, train=train)
    folder = work / f"seed{seed}-scst{scst_epochs}"
    scores = train_captioner(cell, MANIFEST, folder / "model", folder / "live", folder / "checkpoint.pt")
    metrics, _ = evaluate_captioner(cell, manifest, folder / "model")
    return {**{k: metrics.get(k) for k in KEYS}, "val_CIDEr_greedy": scores["CIDEr_greedy"],
            "best_epoch": scores["epoch"]}


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {std:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--scst-epochs", type=int, default=2)
    args = parser.parse_args()
    params, manifest = load_params(ROOT / "params.yaml"), load_manifest()
    t = params.train
    runs: dict[str, list[dict]] = {"cross-entropy": [], f"+ {args.scst_epochs} SCST epochs": []}
    with tempfile.TemporaryDirectory() as work:
        for seed in args.seeds:
            for label, epochs in zip(runs, (0, args.scst_epochs)):
                runs[label].append(trained_and_scored(params, manifest, seed, epochs, Path(work)))
                print(f"seed {seed}, {label}: {json.dumps(runs[label][-1])}", flush=True)
    print(f"\n{len(args.seeds)} seeds, {params.evaluate.split} split, {params.evaluate.decode.method} decoding; "
          f"SCST: reward {t.scst_reward}, baseline {t.scst_baseline}, {t.scst_samples} sample(s), lr {t.scst_lr} (CPU)")
    print("| model | " + " | ".join(KEYS) + " |\n|---|" + "---|" * len(KEYS))
    for label, rows in runs.items():
        print(f"| {label} | " + " | ".join(mean_std([r[k] for r in rows]) for k in KEYS) + " |")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"seeds": args.seeds, "scst": dataclasses.asdict(t) | {"scst_epochs": args.scst_epochs},
                               "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
