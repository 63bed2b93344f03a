"""Feature stages as a user runs them: resumable, incremental, rank-sharded, rejecting bad files."""
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
import yaml

from features.store import StoreError, shard_path
from pipeline.stages import clip_image, clip_text, knn, prepare, region_clip, region_keywords, regions, world
from tests.conftest import ROOT, tiny_project


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A working folder with the demo parameters shrunk to 10 images in shards of 4."""
    tiny_project(tmp_path, (world, prepare))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["stage"])
    return tmp_path


def _shards(project, kind):
    return sorted((project / "data/features" / kind).glob("shard-*.h5"))


def _read(path, name):
    with h5py.File(path, "r") as f:
        return f[name][()]


def test_killed_stage_redoes_only_missing_shards(project):
    clip_image.main()
    paths = _shards(project, "clip_image")
    assert [p.name for p in paths] == ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]
    before = {p: p.stat().st_mtime_ns for p in paths}
    expected = _read(paths[1], "embeddings")
    paths[1].unlink()  # as if killed before writing shard 1
    (project / "data/features/clip_image/shard-00002.h5.tmp").write_bytes(b"half written")
    clip_image.main()
    assert paths[0].stat().st_mtime_ns == before[paths[0]] and paths[2].stat().st_mtime_ns == before[paths[2]]
    np.testing.assert_array_equal(_read(paths[1], "embeddings"), expected)


def test_changed_provenance_recomputes(project):
    clip_image.main()
    path = _shards(project, "clip_image")[0]
    with h5py.File(path, "a") as f:  # a shard made under other settings
        record = json.loads(f.attrs["provenance"])
        f.attrs["provenance"] = json.dumps({**record, "clip.weights": "sha256:other"})
    clip_image.main()
    assert json.loads(_read_attr(path, "provenance"))["clip.weights"] != "sha256:other"


def _read_attr(path, name):
    with h5py.File(path, "r") as f:
        return f.attrs[name]


def test_a_changed_photo_or_caption_recomputes_its_shard_only(project):
    clip_image.main()
    clip_text.main()
    kinds = ("clip_image", "clip_text")
    before = {kind: [p.stat().st_mtime_ns for p in _shards(project, kind)] for kind in kinds}
    images = project / "data/world/images"
    (images / "000005.png").write_bytes((images / "000000.png").read_bytes())  # image 5: shard 1, row 1
    dataset = json.loads((project / "data/world/dataset.json").read_text())
    dataset["images"][9]["sentences"][0]["raw"] = "A changed caption."  # image 9: shard 2
    (project / "data/world/dataset.json").write_text(json.dumps(dataset))
    prepare.main()
    clip_image.main()
    clip_text.main()
    after = {kind: [p.stat().st_mtime_ns for p in _shards(project, kind)] for kind in kinds}
    assert [a == b for a, b in zip(before["clip_image"], after["clip_image"])] == [True, False, True]
    assert [a == b for a, b in zip(before["clip_text"], after["clip_text"])] == [True, True, False]
    first = _shards(project, "clip_image")
    np.testing.assert_array_equal(_read(first[1], "embeddings")[1], _read(first[0], "embeddings")[0])


def test_growing_data_set_adds_shards_only(project):
    clip_image.main()
    first = {p.name: p.stat().st_mtime_ns for p in _shards(project, "clip_image")}
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["world"]["n_test"] = 6  # 4 more images, appended at the end of the manifest
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    world.main()
    prepare.main()
    clip_image.main()
    now = {p.name: p.stat().st_mtime_ns for p in _shards(project, "clip_image")}
    assert len(now) == 4
    assert now["shard-00000.h5"] == first["shard-00000.h5"] and now["shard-00001.h5"] == first["shard-00001.h5"]


def test_bad_images_are_rejected_with_reason_and_never_served(project):
    (project / "data/world/images/000005.png").write_bytes(b"\x89PNG truncated")
    clip_image.main()
    regions.main()
    knn.main()
    region_clip.main()
    for kind in ("clip_image", "regions", "knn", "region_clip"):
        (reject,) = json.loads((project / f"data/features/{kind}/rejects.json").read_text())
        assert reject["id"] == "5" and "000005.png" in reject["reason"]
    path = shard_path(project / "data/features", "clip_image", 1)
    assert _read(path, "valid").tolist() == [True, False, True, True]
    assert np.isnan(_read(path, "embeddings")[1]).all()  # NaN, never a made-up vector
    from features.store import FeatureReader

    reader = FeatureReader(project / "data/features", "clip_image", 4, 10, {})
    with pytest.raises(StoreError, match="image 5 was rejected at extraction"):
        reader.row(5, "embeddings")


def test_fail_mode_stops_naming_the_file(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["store"]["on_bad_image"] = "fail"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    (project / "data/world/images/000002.png").write_bytes(b"")
    with pytest.raises(ValueError, match="000002.png"):
        clip_image.main()
    assert not _shards(project, "clip_image")  # nothing that looks complete was left behind


def test_two_ranks_give_the_single_process_result(project):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline.stages.regions", "--shard", f"{i}/2"], cwd=project,
                              env={**env, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        assert p.wait() == 0, p.stderr.read()[-2000:]
    two = {p.name: {n: _read(p, n) for n in ("features", "boxes", "labels", "counts")} for p in _shards(project, "regions")}
    for p in _shards(project, "regions"):
        p.unlink()
    regions.main()
    one = {p.name: {n: _read(p, n) for n in ("features", "boxes", "labels", "counts")} for p in _shards(project, "regions")}
    assert one.keys() == two.keys() and len(one) == 3
    for name in one:
        for key in one[name]:
            np.testing.assert_allclose(one[name][key], two[name][key], atol=1e-3)


def test_region_keywords_by_faiss_retrieval_over_crops(project):
    from features.clip import encode_region_crops, load_clip
    from features.store import read_bank
    from pipeline.params import load_params
    from pipeline.provenance import keyword_bank

    (project / "object_keywords.txt").write_text("red circle\nblue square\ngreen triangle\nyellow star\n")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["keywords"].update(object_bank="object_keywords.txt", local_source="retrieval", retrieval_k=2)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in (regions, clip_text, region_keywords):
        stage.main()
    path = shard_path(project / "data/features", "region_keywords", 0)
    ids, scores = _read(path, "ids"), _read(path, "scores")
    counts = _read(shard_path(project / "data/features", "regions", 0), "counts")
    assert ids.shape[-1] == 2 and (ids[:, :, 0][np.arange(ids.shape[1]) < counts[:, None]] >= 0).all()
    assert (ids[np.arange(ids.shape[1])[None, :] >= counts[:, None]] == -1).all()  # padding: no keyword
    # the FAISS answer equals brute-force cosine over the same embeddings
    p = load_params(project / "params.yaml")
    _, bank = read_bank(project / "data/features/keywords.h5", "object", keyword_bank(p))
    boxes = _read(shard_path(project / "data/features", "regions", 0), "boxes")
    paths = [project / "data/world/images" / f"{i:06d}.png" for i in range(4)]
    crops, _ = encode_region_crops(load_clip(p.clip, "cpu"), paths, boxes, counts, 0)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    cosine = unit(crops[0, : counts[0]]) @ unit(bank).T
    assert ids[0, : counts[0], 0].tolist() == cosine.argmax(1).tolist()
    np.testing.assert_allclose(scores[0, : counts[0], 0], cosine.max(1), atol=2e-3)


def test_training_fine_tunes_clip_from_cached_tokens(project):
    """clip.cache_tokens + model.finetune_clip through the real train and evaluate stages: the
    saved captioner carries its own CLIP tail, which phase 2 moved away from the extractor's."""
    from features.clip import load_clip
    from pipeline.params import load_params
    from pipeline.stages import evaluate, train
    from train.model import load_captioner

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["clip"]["cache_tokens"] = True
    params["model"]["finetune_clip"] = True
    params["train"].update(phase1_epochs=0, phase2_epochs=1, batch_size=8, val_images=0)  # every saved epoch is phase 2
    params["evaluate"]["decode"].update(method="greedy")
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in (clip_image, regions, clip_text, knn, region_keywords, region_clip, train, evaluate):
        stage.main()
    model, config = load_captioner(project / "models/captioner")
    clip = load_clip(load_params(project / "params.yaml").clip, "cpu")
    assert config["clip_tail"]["model"] == params["clip"]["model"] and model.clip_tail is not None
    assert not torch.equal(model.clip_tail.blocks[-1].mlp.c_fc.weight, clip.model.visual.transformer.resblocks[-1].mlp.c_fc.weight)
    assert json.loads((project / "results/metrics.json").read_text())["n_images"] == 2


def test_a_user_error_ends_a_stage_with_one_line_not_a_traceback(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["image_root"] = "data"  # the folder above the world's images
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("GRAPHCAP_TRACEBACK", None)
    run = subprocess.run([sys.executable, "-m", "pipeline.stages.prepare"], cwd=project, capture_output=True, text=True,
                         env=env)
    assert run.returncode == 2 and "Traceback" not in run.stderr  # USER_ERROR_EXIT
    assert run.stderr.strip().splitlines()[-1].startswith(
        "stage prepare: DatasetError: data/world/dataset.json: none of its 10 image files is under data.image_root data")


def test_an_extractor_giving_nan_has_that_image_rejected_not_stored(project, monkeypatch):
    from features import clip as real_clip

    def encode_with_a_nan(*args, **kwargs):  # the real extractor, then one value of image 1 turned NaN
        arrays, errors = real_clip.encode_images(*args, **kwargs)
        arrays["embeddings"][1, 3] = np.nan
        return arrays, errors

    monkeypatch.setattr("pipeline.extract.encode_images", encode_with_a_nan)
    clip_image.main()
    with h5py.File(_shards(project, "clip_image")[0], "r") as f:
        assert f["valid"][()].tolist() == [True, False, True, True]
        (reject,) = json.loads(f.attrs["rejects"])
    assert reject["id"] == "1" and "'embeddings' are not finite" in reject["reason"]


def test_a_nan_written_into_a_stored_row_is_recomputed(project):
    clip_image.main()
    path = _shards(project, "clip_image")[0]
    clean = _read(path, "embeddings")
    with h5py.File(path, "a") as f:  # through HDF5, so the checksums still hold: the values are checked too
        f["embeddings"][2, 0] = np.nan
    clip_image.main()
    np.testing.assert_array_equal(_read(path, "embeddings"), clean)
