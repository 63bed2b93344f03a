"""Stage `ablation@<variant>-<seed>`: one cell of the ablation table. Trains the variant (see
eval/ablation.py) with that seed on the shorter ablation schedule, evaluates it like the
evaluate stage, and keeps only the metrics: results/ablations/<variant>-<seed>.json.

    python -m pipeline.stages.ablation <variant> <seed>
"""
import argparse
import dataclasses
import shutil
from pathlib import Path

import torch

from eval.ablation import variant
from features.files import write_json
from features.shards import for_each_shard
from pipeline import extract
from pipeline.app import load_manifest, run_main, start
from pipeline.evaluation import evaluate_captioner
from pipeline.params import Params
from pipeline.paths import ABLATION_CELLS, ABLATION_WORK, MANIFEST
from pipeline.provenance import expected
from pipeline.training import train_captioner


def variant_params(params: Params, name: str, seed: int) -> Params:
    """``params`` with the variant's switches, the training seed and the ablation schedule."""
    row, schedule = variant(name), params.ablation
    semi = {"labelled_fraction": schedule.labelled_fraction} if row.labelled_only else {}
    if row.scst:
        semi["scst_epochs"] = schedule.scst_epochs
    model = dataclasses.replace(params.model, **row.model)
    train = dataclasses.replace(params.train, **row.train, **semi, seed=seed, phase1_epochs=schedule.phase1_epochs,
                                phase2_epochs=schedule.phase2_epochs,
                                loss=dataclasses.replace(params.train.loss, **row.loss))
    decode = dataclasses.replace(params.evaluate.decode, **row.decode)
    return dataclasses.replace(params, model=model, train=train, knn=dataclasses.replace(params.knn, **row.knn),
                               evaluate=dataclasses.replace(params.evaluate, decode=decode))


def with_own_graphs(params: Params, cell: Params, manifest: dict, work: Path) -> Params:
    """A variant with other KNN graphs than the store's gets them in a store folder of its own
    (``work``/store: its graphs computed there, every other kind linked from the shared store),
    so cells of different metrics can run side by side."""
    if cell.knn == params.knn:
        return cell
    store = work / "store"
    store.mkdir(parents=True, exist_ok=True)
    for entry in Path(params.store.dir).resolve().iterdir():
        if entry.name != "knn" and not (store / entry.name).exists():
            (store / entry.name).symlink_to(entry)
    cell = dataclasses.replace(cell, store=dataclasses.replace(cell.store, dir=str(store)))
    for_each_shard(cell.store, manifest, "knn", expected(cell)["knn"], extract.knn(cell, manifest, torch.device("cpu")))
    return cell


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variant")
    parser.add_argument("seed", type=int)
    args = parser.parse_args()
    params, manifest = start(), load_manifest()
    name = f"{args.variant}-{args.seed}"
    work = ABLATION_WORK / name  # a killed cell resumes from its checkpoint here
    params = with_own_graphs(params, variant_params(params, args.variant, args.seed), manifest, work)
    train_captioner(params, MANIFEST, work / "model", work / "live", work / "checkpoint.pt")
    metrics, _ = evaluate_captioner(params, manifest, work / "model")
    write_json(ABLATION_CELLS / f"{name}.json", {**metrics, "variant": args.variant, "seed": args.seed})
    shutil.rmtree(work)


if __name__ == "__main__":
    run_main(main)
