"""Stage `release`: the trained captioner as a self-contained, Hub-style folder → models/release.

It holds everything from pixels to caption, so it captions anywhere, offline, without the
project: the model (config.json, weights.safetensors, gpt2/), params.yaml (the extractors',
keyword banks' and decoding's settings the model was trained with), the extractors' weights under
weights/ (copied, not named: one folder works offline and on the Hub), the files the settings
name by a relative path (CLIP's config, the detector's classes, ...) at that same path,
README.md, its model card, and the Gradio demo as a Hugging Face Space: app.py, requirements.txt
and the graphcap code the model was trained with under code/ (what pyproject.toml packages). The model's provenance check stays: extractors other than those it
was trained on are refused by name. ``graphcap-caption photo.jpg --model models/release`` and
``graphcap.Captioner.from_pretrained("models/release")`` use it; ``train.model.push_to_hub``
uploads it."""
import json
import logging
import os
import shutil
import tomllib
from dataclasses import asdict
from fnmatch import fnmatch
from pathlib import Path

import yaml

from eval.model_card import model_card
from features.clip import clip_activation
from pipeline.app import run_main, start
from pipeline.params import Params
from pipeline.paths import CAPTIONER, METRICS, RELEASE, keyword_banks

log = logging.getLogger(__name__)

CHECKOUT = Path(__file__).resolve().parents[2]  # the code running this stage: its packages and pyproject.toml


def main() -> None:
    params = start()  # the pretrained inputs as the weights stage resolved them
    tmp = RELEASE.with_name(RELEASE.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(CAPTIONER, tmp, copy_function=_link_or_copy)
    raw = asdict(params)  # every key explicit, as the model was trained with
    for inside, source in pixel_inputs(params, raw).items():
        (tmp / inside).parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, tmp / inside, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(source), str(tmp / inside))
    (tmp / "params.yaml").write_text("# the settings this model was trained with (its extractors, keyword banks and "
                                     "decoding); paths are relative to this folder\n" + yaml.safe_dump(raw, sort_keys=False))
    write_space(tmp)
    config = json.loads((CAPTIONER / "config.json").read_text())
    size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
    card = model_card(config, json.loads(METRICS.read_text()), asdict(params.train), raw, size)
    (tmp / "README.md").write_text(card)
    shutil.rmtree(RELEASE, ignore_errors=True)
    tmp.rename(RELEASE)


def pixel_inputs(params: Params, raw: dict) -> dict[str, Path]:
    """The files the release must hold (its path inside → the source), ``raw`` (the parameters as
    a dict) pointed at them: the resolved weights under weights/, the files named by a relative
    path at that path (their names are part of the provenance), GPT-2 as the model's own."""
    weights = {"weights/clip/" + Path(params.clip.pretrained).name: Path(params.clip.pretrained),
               "weights/detector/" + Path(params.regions.weights).name: Path(params.regions.weights)}
    raw["clip"]["pretrained"], raw["regions"]["weights"] = list(weights)
    raw["clip"]["activation"] = clip_activation(params.clip)  # resolved (a tag's): the copy is a plain file
    if params.clip.tokenizer:
        weights["weights/clip_tokenizer"] = Path(params.clip.tokenizer)
        raw["clip"]["tokenizer"] = "weights/clip_tokenizer"
    raw["model"]["gpt2"] = "gpt2"
    named = [params.clip.config_file, params.regions.classes, params.regions.d2_config,
             params.keywords.scene_bank, params.keywords.object_bank]
    if params.keywords.local_source == "retrieval":  # the object bank is read at caption time
        named.append(str(keyword_banks(params.store.dir)))
    for name in named:
        if name and Path(name).is_file() and not Path(name).is_absolute():
            weights[name] = Path(name)
        elif name and Path(name).is_absolute():
            log.warning("release: %s is named by an absolute path; the release names it there, not a copy", name)
    return weights


SPACE_APP = '''"""The graphcap demo (Gradio) of this released model, as a Hugging Face Space runs it: `python app.py`.
It runs the graphcap code the model was trained with (code/), whatever graphcap is installed."""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "code"))
from pipeline.demo import main  # noqa: E402

sys.exit(main(["--model", str(HERE)]))
'''


def write_space(folder: Path) -> None:
    """app.py, requirements.txt (pyproject.toml's dependencies and its demo extra) and code/ (the
    Python files of the packages pyproject.toml names)."""
    project = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())
    (folder / "app.py").write_text(SPACE_APP)
    needed = project["project"]["dependencies"] + project["project"]["optional-dependencies"]["demo"]
    (folder / "requirements.txt").write_text("\n".join(needed) + "\n")
    patterns = project["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in sorted(p for p in CHECKOUT.iterdir() if p.is_dir() and any(fnmatch(p.name, x) for x in patterns)):
        for source in package.rglob("*.py"):
            inside = folder / "code" / source.relative_to(CHECKOUT)
            inside.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, inside)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)  # the weights are not stored twice
    except OSError:  # another file system
        shutil.copy2(source, target)


if __name__ == "__main__":
    run_main(main)
