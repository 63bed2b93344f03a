"""A release folder captions from pixels anywhere: copied out of the project, `graphcap-caption`
(the installed command, no params.yaml around) and the Python API give the caption the project
gives; extractors other than those it was trained with are refused by name."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

from features.store import StoreError
from graphcap import Captioner
from pipeline import caption
from tests.conftest import real_photos

COMMAND = Path(sys.executable).parent / "graphcap-caption"


def caption_outside(release: Path, photo: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(COMMAND), str(photo), "--model", str(release), "--jsonl"], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def outside(trained, tmp_path_factory) -> Path:
    """The release, copied to a folder outside the project with no params.yaml near it."""
    folder = tmp_path_factory.mktemp("elsewhere")
    shutil.copytree(trained / "models/release", folder / "release")
    return folder


def test_the_release_holds_everything_from_pixels_to_caption(trained):
    release = trained / "models/release"
    params = yaml.safe_load((release / "params.yaml").read_text())
    assert params["clip"]["pretrained"] == "weights/clip/demo-tiny-clip.safetensors"
    assert params["regions"]["weights"] == "weights/detector/demo_tiny.safetensors"
    for name in (params["clip"]["pretrained"], params["regions"]["weights"], params["regions"]["classes"],
                 params["clip"]["config_file"], "weights/clip_tokenizer/tokenizer.json", "gpt2/config.json"):
        assert (release / name).is_file(), name
    card = (release / "README.md").read_text()
    assert "| CLIP | demo-tiny-clip (gelu), weights `weights/clip/demo-tiny-clip.safetensors` |" in card
    assert "Captioner.from_pretrained" in card and "MB in all" in card


def test_a_copied_release_captions_a_real_photo_as_the_project_does(trained, outside, monkeypatch, capsys):
    photo = real_photos()[0]
    monkeypatch.chdir(trained)
    assert caption.main([str(photo), "--model", "models/captioner", "--jsonl"]) == 0  # the project's params
    inside = json.loads(capsys.readouterr().out)["caption"]
    assert not (outside / "params.yaml").exists()
    done = caption_outside(outside / "release", photo, outside)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["caption"] == inside
    with Captioner.from_pretrained(outside / "release") as captioner:
        assert captioner.caption([Image.open(photo), photo]) == [inside, inside]
        in_memory = Image.open(photo).convert("RGB").rotate(90, expand=True)  # pixels only: written as PNG
        assert isinstance(captioner.caption([in_memory])[0], str)
        with pytest.raises(ValueError, match=r"not captioned: .*missing.jpg: .*"):
            captioner.caption([photo, outside / "missing.jpg"])


@pytest.mark.parametrize("which, key", [("clip", "clip.weights"), ("detector", "regions.weights")])
def test_a_release_with_other_extractors_is_refused_by_name(outside, tmp_path, which, key):
    release = shutil.copytree(outside / "release", tmp_path / "release")
    params = yaml.safe_load((release / "params.yaml").read_text())
    section = "clip" if which == "clip" else "regions"
    field = "pretrained" if which == "clip" else "weights"
    weights = release / params[section][field]
    state = load_file(str(weights))
    name = next(iter(state))
    state[name] = state[name] + 0.01  # other weights of the same architecture
    save_file(state, str(weights))
    with pytest.raises(StoreError, match=f"'{key}' differs"):
        Captioner.from_pretrained(release)
    if which == "detector":  # the command says the same in one line (one run of it is enough: ~15 s)
        Image.new("RGB", (64, 64), (120, 40, 200)).save(tmp_path / "x.png")
        done = caption_outside(release, tmp_path / "x.png", tmp_path)
        assert done.returncode == 2 and f"provenance key '{key}' differs" in done.stderr
        assert "Traceback" not in done.stderr
