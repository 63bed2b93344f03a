"""Every file and folder the pipeline reads or writes, relative to the project root: the one place
the code names them. dvc.yaml, data/dvc.yaml and studies/dvc.yaml list the same paths as deps
and outs (DVC needs them written there); tests/test_layering.py checks that the two agree."""
from pathlib import Path

WEIGHTS = Path("weights")  # every pretrained input, resolved by the weights stage (sources: e.g. pretrained/)
WORLD = Path("data/world")  # the demo world: images/ and dataset.json
MANIFEST = Path("data/manifest.json")

CAPTIONER = Path("models/captioner")  # the trained model (best epoch)
RELEASE = Path("models/release")  # the same model with its model card (README.md): Hub-style
CHECKPOINT = Path("models/checkpoint.pt")  # the last epoch's full training state, for resuming (not a DVC output)
TRAINING_LOG = Path("dvclive")
TRAIN_SCORES = Path("results/train.json")

METRICS = Path("results/metrics.json")
HEADLINE_METRICS = Path("results/headline.json")  # METRICS' headline figures: what `dvc metrics show` shows
CAPTIONS = Path("results/captions.json")
COCO_RESULTS = Path("results/coco_results.json")  # the COCO caption server's result format
ERROR_ANALYSIS = Path("results/error_analysis.json")
REPORT = Path("results/report")

# the studies: a DVC project of their own in studies/ (its outputs must lie inside it)
STUDIES = Path("studies")
ABLATION_DATA = STUDIES / "results/ablation_data.json"  # what the data set offers the studies
ABLATION_CELLS = STUDIES / "results/ablations"  # one JSON of metrics per variant and seed
ABLATION_WORK = Path("models/ablations")  # a cell's model and checkpoint while it runs (removed after)
ABLATION_TABLE = STUDIES / "results/ablations"  # .md, .csv and .json beside the cells' folder


def keyword_banks(store_dir: str | Path) -> Path:
    """The scene and object keyword banks, beside the feature kinds in the store."""
    return Path(store_dir) / "keywords.h5"
