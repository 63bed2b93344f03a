"""Stage `ablation_check` (studies/dvc.yaml): before any cell trains, every variant of
ablation.variants is checked against the data set, and one that needs what it lacks (a grounded
row: phrase groundings) is refused at once, naming it. Writes what the data set offers to
results/ablation_data.json, which every cell depends on, so the check always runs first."""

from corpus.groundings import has_groundings
from eval.ablation import PHRASE_GROUNDINGS, REGION_CROPS, check_variants
from features.files import write_json
from pipeline.app import load_manifest, run_main, start
from pipeline.paths import ABLATION_DATA


def data_offers(manifest: dict) -> set[str]:
    """The requirements of eval/ablation.py's DATA_OFFERS that the manifest's training images meet."""
    train_images = [e for e in manifest["images"] if e["split"] == "train"]
    return {PHRASE_GROUNDINGS} if train_images and all(map(has_groundings, train_images)) else set()


def main() -> None:
    params, manifest = start(), load_manifest()
    offered = data_offers(manifest) | ({REGION_CROPS} if "region_clip" in params.store.optional_kinds else set())
    check_variants(params.ablation.variants, offered, manifest["dataset"])  # a ValueError: one line (run_main)
    write_json(ABLATION_DATA, {"dataset": manifest["dataset"], "offers": sorted(offered)})


if __name__ == "__main__":
    run_main(main)
