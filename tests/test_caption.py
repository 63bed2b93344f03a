"""The `caption` command on new image files: the same features and captions as the pipeline gives
the same images, bad files reported by name, and a model of other features refused."""
import contextlib
import dataclasses
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from features.store import StoreError
from pipeline import caption
from pipeline.params import load_params
from tests.conftest import ROOT, real_photos
from tests.test_images import deadline, make_special_files


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
    files, refused = caption.collect_images([tmp_path])
    assert not refused
    results = caption.caption_files(files, trained / "models/captioner", params, "cpu")
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
    (tmp_path / "empty").mkdir()
    assert caption.main([str(tmp_path / "empty")]) == 2  # one line naming it, no traceback
    assert capsys.readouterr().err.strip().startswith(f"graphcap-caption: FileNotFoundError: no image files (.bmp .gif")


def test_model_of_other_features_is_refused(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(trained)
    params = load_params(trained / "params.yaml")
    other = dataclasses.replace(params, knn=dataclasses.replace(params.knn, k=params.knn.k + 1))
    with pytest.raises(StoreError, match="'knn' differs"):
        caption.caption_files([trained / "data/world/images/000000.png"], trained / "models/captioner", other, "cpu")


def _caption_alone(path) -> dict:
    """`graphcap-caption <one file> --jsonl`: exit 0, one JSON line with a caption, and on stderr
    only the demo-world note: no bar, warning or traceback (an uncaught error would raise here)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert caption.main([str(path), "--jsonl"]) == 0
    (note,) = err.getvalue().splitlines()
    assert "trained on the built-in demo world" in note
    (line,) = out.getvalue().splitlines()
    record = json.loads(line)
    assert record["caption"].strip(), record
    return record


@pytest.fixture(scope="module")
def regions_alone(trained):
    """Every real photo captioned alone (one `graphcap-caption` call each, so a photo with 0 or 1
    regions is a batch where no image has a pair): photo → regions detected."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(trained)
        return {path: _caption_alone(path)["regions"] for path in real_photos()}


def test_every_real_photo_alone_gets_a_caption(regions_alone):
    assert len(regions_alone) == 48 and min(regions_alone.values()) <= 1  # the real edge cases are among them


def test_batches_of_only_zero_and_one_region_photos_are_captioned(trained, regions_alone, monkeypatch):
    monkeypatch.chdir(trained)
    params = load_params(trained / "params.yaml")
    few = [path for path, count in regions_alone.items() if count <= 1]
    one = min(few, key=lambda path: (regions_alone[path], str(path)))
    # copies of one photo are padded alike in the detector's batch, so that batch surely has no pair
    for batch in ([one] * 5, few):
        records = caption.caption_files(batch, trained / "models/captioner", params, "cpu")
        assert len(records) == len(batch) and all(r["caption"].strip() for r in records)
        if batch[0] == batch[-1]:
            assert {r["regions"] for r in records} == {regions_alone[one]}


def _awkward_files(folder, photo) -> list:
    """The ways a real photo arrives: every format and mode the decoder converts, EXIF-rotated, 24 MP."""
    image = Image.open(photo).convert("RGB")
    made = {"photo.png": image, "photo.webp": image, "gray.jpg": image.convert("L"), "cmyk.jpg": image.convert("CMYK"),
            "palette.gif": image.convert("P"), "alpha.png": image.convert("RGBA"),
            "sixteen.png": Image.fromarray((np.asarray(image.convert("L"), np.uint16) * 257))}
    for name, im in made.items():
        im.save(folder / name)
    exif = image.getexif()
    exif[0x0112] = 6  # shown rotated 90° clockwise
    image.save(folder / "rotated.jpg", exif=exif)
    image.resize((6000, 4000)).save(folder / "24mp.jpg", quality=70)
    return sorted(folder.iterdir())


def test_awkward_files_each_get_a_caption(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(trained)
    for path in _awkward_files(tmp_path, real_photos()[0]):
        _caption_alone(path)


def test_a_demo_world_model_says_so_once(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(trained)
    for k in range(3):
        shutil.copy(trained / "data/world/images/000000.png", tmp_path / f"{k}.png")
    assert caption.main([str(tmp_path)]) == 0
    assert capsys.readouterr().err.count("trained on the built-in demo world") == 1


def test_missing_and_special_paths_are_refused_by_name_unopened(tmp_path):
    special = make_special_files(tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")  # a folder's other files: filtered out, no reason
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    with deadline(5):
        files, refused = caption.collect_images([tmp_path, tmp_path / "missing.jpg", tmp_path / "fifo.jpg"])
    assert files == [tmp_path / "ok.png"]
    assert refused == special | {tmp_path / "missing.jpg": "no such file or folder"}


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("note: ")]  # the demo-world note


def test_a_missing_path_or_a_fifo_is_reported_and_the_rest_captioned(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(trained)
    special = make_special_files(tmp_path)
    shutil.copy(trained / "data/world/images/000000.png", tmp_path / "a.png")
    missing = tmp_path / "missing.jpg"
    with deadline(60):  # a FIFO opened blocks for ever: fail instead
        assert caption.main([str(tmp_path / "fifo.jpg")]) == 1  # a FIFO given alone
        assert _lines(capsys.readouterr().err) == [f"{tmp_path / 'fifo.jpg'}: not captioned: not a regular file (FIFO)"]
        assert caption.main([str(missing), str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{tmp_path / 'a.png'}\t") and len(captured.out.splitlines()) == 1
    assert _lines(captured.err) == [f"{path}: not captioned: {reason}"  # and nothing else: no warning, no traceback
                                    for path, reason in ({missing: "no such file or folder"} | special).items()]


def test_a_decompression_bomb_is_refused_and_the_rest_captioned(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(trained)
    bomb = tmp_path / "bomb.png"
    Image.new("1", (14000, 14000)).save(bomb)  # 24 KB on disk, 588 MB as RGB
    shutil.copy(trained / "data/world/images/000000.png", tmp_path / "a.png")
    with deadline(60):
        assert caption.main([str(bomb), str(tmp_path / "a.png"), "--jsonl"]) == 1
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records[0]["file"] == str(bomb) and f"{bomb}: too large to decode (" in records[0]["error"]
    assert records[1]["file"] == str(tmp_path / "a.png") and records[1]["caption"]


def test_a_rejected_file_is_one_line_on_stderr_and_a_kill_leaves_no_scratch_store(trained, tmp_path):
    """As a user runs it (a process of its own): one "not captioned" line per rejected file and no
    warning naming the scratch store; SIGTERM mid-run removes the scratch store."""
    import os
    import signal
    import subprocess
    import sys
    import time

    shutil.copy(trained / "data/world/images/000000.png", tmp_path / "a.png")
    (tmp_path / "empty.png").write_bytes(b"")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = dict(os.environ, TMPDIR=str(scratch), PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "pipeline.caption", str(tmp_path / "a.png"), str(tmp_path / "empty.png")]
    done = subprocess.run(command, cwd=trained, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert _lines(done.stderr) == [f"{tmp_path / 'empty.png'}: not captioned: {tmp_path / 'empty.png'}: "
                                   "cannot read image (UnidentifiedImageError: cannot identify image file "
                                   f"'{tmp_path / 'empty.png'}')"], done.stderr
    run = subprocess.Popen(command, cwd=trained, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not any(scratch.glob("graphcap-caption-*")) and run.poll() is None:
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)
    code, err = run.wait(timeout=60), run.stderr.read()
    assert code == 128 + signal.SIGTERM and "Traceback" not in err, err
    assert not list(scratch.glob("graphcap-caption-*"))


def _damage(model, damage: str):
    """A copy of a model folder damaged as a bad download or disk does it; returns the file named."""
    weights = model / "weights.safetensors"
    if damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "empty weights":
        weights.write_bytes(b"")
    elif damage == "pickled weights":
        import torch

        torch.save({"fuse.weight": torch.zeros(2)}, weights)
    elif damage == "invalid config.json":
        (model / "config.json").write_text("{not json")
        return model / "config.json"
    elif damage == "NaN weights":
        from safetensors.torch import load_file, save_file

        state = load_file(str(weights))
        state[next(iter(state))][0] = float("nan")
        save_file(state, str(weights))
        return model
    return weights


DAMAGES = ("truncated weights", "empty weights", "pickled weights", "invalid config.json", "NaN weights")


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_model_folder_is_one_line_naming_the_file(trained, tmp_path, monkeypatch, capsys, damage):
    from pipeline import demo

    monkeypatch.chdir(trained)
    model = tmp_path / "model"
    shutil.copytree(trained / "models/captioner", model)
    named = _damage(model, damage)
    photo = trained / "data/world/images/000000.png"
    for name, run in (("graphcap-caption", lambda: caption.main([str(photo), "--model", str(model)])),
                      ("graphcap-demo", lambda: demo.main(["--model", str(model), "--port", "0"]))):
        assert run() == 2
        (line,) = _lines(capsys.readouterr().err)
        assert line.startswith(f"{name}: ValueError: {named}") and "Traceback" not in line, line


def test_captioning_works_from_another_folder_with_params_pointing_into_the_project(trained, tmp_path, monkeypatch,
                                                                                     capsys):
    """The params' relative paths (assets/, weights/, models/captioner) are the project's, the
    photo's and the output's are the user's."""
    shutil.copy(trained / "data/world/images/000000.png", tmp_path / "a.png")
    monkeypatch.chdir(trained)
    assert caption.main([str(tmp_path / "a.png"), "--jsonl"]) == 0
    inside = json.loads(capsys.readouterr().out)
    monkeypatch.chdir(tmp_path)
    assert caption.main(["a.png", "--params", str(trained / "params.yaml"), "--jsonl"]) == 0
    outside = json.loads(capsys.readouterr().out)
    assert outside == {**inside, "file": "a.png"}
