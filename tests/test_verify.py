"""`verify` on a real store: clean passes; each kind of damage is named and fails the command."""
import shutil

import h5py
import numpy as np
import pytest
import yaml

from features.store import shard_path
from pipeline import verify
from pipeline.stages import clip_image, clip_text, knn, prepare, region_clip, region_keywords, regions, world
from tests.conftest import tiny_project


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """All feature kinds of a 10-image world in shards of 4, made once."""
    stages = (world, prepare, clip_image, regions, clip_text, knn, region_keywords, region_clip)
    return tiny_project(tmp_path_factory.mktemp("verify"), stages)


@pytest.fixture
def store(built, tmp_path, monkeypatch):
    """A fresh copy of that project for each test to damage."""
    shutil.copytree(built, tmp_path / "project", symlinks=True)
    monkeypatch.chdir(tmp_path / "project")
    return tmp_path / "project/data/features"


def test_clean_store_passes(store, capsys):
    assert verify.main([]) == 0
    assert "18 shards checked, 0 problem(s)" in capsys.readouterr().out


def test_each_problem_is_named(store, capsys):
    shard_path(store, "clip_image", 1).unlink()  # missing
    truncated = shard_path(store, "regions", 2)
    truncated.write_bytes(truncated.read_bytes()[:500])  # damaged (not by us: our writes are atomic)
    with h5py.File(shard_path(store, "clip_text", 0), "a") as f:  # NaN where a feature should be
        f["embeddings"][0, 0] = np.nan
    with h5py.File(shard_path(store, "knn", 0), "a") as f:
        f["neighbors"][1, 0, 0] = 99
    (store / "knn/shard-00007.h5").write_bytes(b"")  # a shard beyond the manifest
    (store / "region_keywords/shard-00001.h5.tmp").write_bytes(b"half")  # a killed write
    assert verify.main([]) == 1
    out = capsys.readouterr().out
    for expected in ("clip_image/shard-00001.h5: missing shard", "regions/shard-00002.h5",
                     "clip_text/shard-00000.h5: 'embeddings' has NaN/Inf", "knn/shard-00000.h5: 'neighbors' index",
                     "knn/shard-00007.h5: beyond the manifest", "region_keywords/shard-00001.h5.tmp: unfinished"):
        assert expected in out, expected


def test_a_photo_changed_under_its_id_is_named(store, capsys, monkeypatch):
    images = store.parent / "world/images"
    (images / "000005.png").write_bytes((images / "000000.png").read_bytes())
    monkeypatch.setattr("sys.argv", ["stage"])
    prepare.main()  # what `dvc repro` runs first: the manifest now holds the new md5
    assert verify.main([]) == 1
    out = capsys.readouterr().out
    stale = [line for line in out.splitlines() if "computed from other inputs" in line]
    assert sorted(line.split(":")[0].split("/")[-2] for line in stale) == [  # image 5 is in shard 1 of each
        "clip_image", "knn", "region_clip", "region_keywords", "regions"]
    assert all("shard-00001.h5" in line for line in stale)


def test_other_parameters_are_named(store, capsys):
    params = yaml.safe_load(open("params.yaml"))
    params["knn"]["k"] = 3
    with open("params.yaml", "w") as f:
        yaml.safe_dump(params, f)
    assert verify.main([]) == 1
    out = capsys.readouterr().out
    assert out.count("provenance key 'knn' differs") == 3 and "clip_image" not in out  # only the knn shards
