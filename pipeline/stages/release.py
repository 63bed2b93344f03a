"""Stage `release`: the trained captioner as a Hub-style model folder → models/release: the model
folder's files (hard links where the file system allows) and README.md, its model card with the
test metrics. ``Captioner.from_pretrained("models/release")`` loads it, offline;
``train.model.push_to_hub("models/release", "user/name")`` shares it."""
import json
import os
import shutil
from dataclasses import asdict

from eval.model_card import model_card
from pipeline.app import run_main, start
from pipeline.paths import CAPTIONER, METRICS, RELEASE


def main() -> None:
    params = start()
    config = json.loads((CAPTIONER / "config.json").read_text())
    card = model_card(config, json.loads(METRICS.read_text()), asdict(params.train))
    tmp = RELEASE.with_name(RELEASE.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(CAPTIONER, tmp, copy_function=_link_or_copy)
    (tmp / "README.md").write_text(card)
    shutil.rmtree(RELEASE, ignore_errors=True)
    tmp.rename(RELEASE)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)  # the weights are not stored twice
    except OSError:  # another file system
        shutil.copy2(source, target)


if __name__ == "__main__":
    run_main(main)
