"""The `caption` command on new image files: the same features and captions as the pipeline gives
the same images, bad files reported by name, and a model of other features refused."""
import dataclasses
import json
import shutil

import pytest

from features.store import StoreError
from pipeline import caption
from pipeline.params import load_params
from pipeline.stages import (clip_image, clip_text, evaluate, knn, prepare, region_clip, region_keywords, regions, train,
                             world)
from tests.conftest import tiny_project


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 12-image world run through every stage (one short epoch per phase, greedy decoding)."""
    stages = (world, prepare, clip_image, regions, clip_text, knn, region_keywords, region_clip, train, evaluate)
    project = tiny_project(tmp_path_factory.mktemp("caption"), stages, n_train=8,
                           train=dict(phase1_epochs=1, phase2_epochs=1, batch_size=8, val_images=0),
                           evaluate={"decode": {"method": "greedy"}})
    return project


def test_new_images_get_the_pipelines_captions(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(trained)
    expected = json.loads((trained / "results/captions.json").read_text())  # the test split, by the pipeline
    manifest = {e["id"]: e for e in json.loads((trained / "data/manifest.json").read_text())["images"]}
    inputs = []
    for k, record in enumerate(expected):  # copied under awkward names: spaces, non-ASCII
        inputs.append(tmp_path / f"new photo {k} é.png")
        shutil.copy(trained / "data/world" / manifest[record["id"]]["path"], inputs[-1])
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    params = load_params(trained / "params.yaml")
    results = caption.caption_files(caption.collect_images([tmp_path]), trained / "models/captioner", params, "cpu")
    by_file = {r["file"]: r for r in results}
    assert [r["file"] for r in results] == sorted(by_file)  # a folder is read in sorted order
    assert "broken.jpg" in by_file[str(tmp_path / "broken.jpg")]["error"]
    for path, record in zip(inputs, expected):
        assert by_file[str(path)]["caption"] == record["caption"]


def test_command_line_writes_json_lines_and_fails_on_bad_files(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(trained)
    shutil.copy(trained / "data/world/images/000000.png", tmp_path / "a.png")
    assert caption.main([str(tmp_path / "a.png"), "--jsonl"]) == 0
    record = json.loads(capsys.readouterr().out.strip())
    assert record["file"].endswith("a.png") and record["caption"]
    (tmp_path / "empty.png").write_bytes(b"")
    assert caption.main([str(tmp_path)]) == 1  # still captions a.png, reports empty.png
    captured = capsys.readouterr()
    assert "a.png\t" in captured.out and "empty.png: not captioned" in captured.err
    with pytest.raises(FileNotFoundError, match="missing.png"):
        caption.main([str(tmp_path / "missing.png")])


def test_model_of_other_features_is_refused(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(trained)
    params = load_params(trained / "params.yaml")
    other = dataclasses.replace(params, knn=dataclasses.replace(params.knn, k=params.knn.k + 1))
    with pytest.raises(StoreError, match="'knn' differs"):
        caption.caption_files([trained / "data/world/images/000000.png"], trained / "models/captioner", other, "cpu")
