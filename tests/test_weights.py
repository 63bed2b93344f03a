"""The weights stage: every pretrained input from a local path or the hub's local cache into
weights/, the later stages reading the copies, and one line when a hub name is not cached."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from pipeline.params import load_params
from pipeline.weights import MissingWeights, localise, resolve
from tests.conftest import ROOT, tiny_project


def _run_weights_stage(project, hub_cache):
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_CACHE=str(hub_cache), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "pipeline.stages.weights"], cwd=project, env=env,
                          capture_output=True, text=True)


def _set_gpt2(project, name):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["model"]["gpt2"] = name
    (project / "params.yaml").write_text(yaml.safe_dump(params))


def _cache_repo(hub_cache, repo, folder):
    """A hub cache holding ``folder`` as repository ``repo`` (the layout huggingface_hub writes)."""
    root = hub_cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, root / "snapshots/0123abcd")
    (root / "refs").mkdir()
    (root / "refs/main").write_text("0123abcd")


def test_a_hub_named_gpt2_comes_from_the_hub_cache_and_the_stages_read_the_copy(tmp_path):
    project = tiny_project(tmp_path)
    _cache_repo(tmp_path / "hub", "someorg/tiny-gpt2", ROOT / "assets/demo/gpt2")
    _set_gpt2(project, "someorg/tiny-gpt2")
    done = _run_weights_stage(project, tmp_path / "hub")
    assert done.returncode == 0, done.stderr[-2000:]
    weights = project / "weights"
    assert sorted(p.name for p in weights.iterdir()) == ["clip", "clip_tokenizer", "detector", "gpt2", "sources.json"]
    assert (weights / "gpt2/config.json").read_bytes() == (ROOT / "assets/demo/gpt2/config.json").read_bytes()
    record = json.loads((weights / "sources.json").read_text())
    assert record["sources"]["gpt2"] == "someorg/tiny-gpt2" and record["clip_activation"] == "gelu"
    params = load_params(project / "params.yaml")
    os.chdir(project)
    try:
        local = localise(params)
    finally:
        os.chdir(ROOT)
    assert local.model.gpt2 == "weights/gpt2" and local.regions.weights.startswith("weights/detector/")
    assert local.clip.pretrained.startswith("weights/clip/") and local.clip.activation == "gelu"


def test_offline_a_name_not_in_the_cache_stops_the_stage_with_one_line(tmp_path):
    project = tiny_project(tmp_path)
    _set_gpt2(project, "gpt2")
    (tmp_path / "hub").mkdir()
    done = _run_weights_stage(project, tmp_path / "hub")
    assert done.returncode == 2 and "Traceback" not in done.stderr  # USER_ERROR_EXIT
    assert done.stderr.strip().splitlines()[-1].startswith(
        "stage weights: MissingWeights: 1 pretrained input(s) missing: model.gpt2: 'gpt2' is not a local folder nor in "
        "the hub's local cache")
    assert "hf download gpt2" in done.stderr and not (project / "weights").exists()


def test_the_papers_clip_tag_not_cached_is_named_with_how_to_get_it(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))  # read at call time
    params = load_params(ROOT / "presets/paper.yaml")
    with pytest.raises(MissingWeights, match=r"clip.pretrained: 'openai' \(ViT-B-32\) is not in the hub's local "
                                             r"cache.*hf download timm/vit_base_patch32_clip_224.openai"):
        resolve(params)


def test_sources_inside_the_stages_own_output_are_refused(tmp_path, monkeypatch):
    project = tiny_project(tmp_path)
    (project / "weights").mkdir()
    shutil.copy(ROOT / "assets/demo/detector/demo_tiny.safetensors", project / "weights/det.safetensors")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["regions"]["weights"] = "weights/det.safetensors"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(project)
    with pytest.raises(MissingWeights, match="regions.weights: weights/det.safetensors lies in weights/"):
        resolve(load_params(project / "params.yaml"))
