"""`verify` on a real store: clean passes; each kind of damage is named and fails the command."""
import shutil

import h5py
import numpy as np
import pytest
import yaml

from features.store import StoreError, shard_path
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


def _flip(path, offset: int, n: int = 16) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, min(offset + n, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_bytes_in_a_shard_are_named_and_the_stage_recomputes_them(store, capsys, monkeypatch):
    path = shard_path(store, "regions", 0)
    before = path.read_bytes()
    _flip(path, len(before) // 2)  # inside the features' chunks, where no metadata check looks
    assert verify.main([]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if "regions/shard-00000.h5" in line] == [
        next(line for line in lines if "regions/shard-00000.h5: 'features' is damaged" in line)]
    monkeypatch.setattr("sys.argv", ["stage"])
    regions.main()  # what `dvc repro` runs when the output changed: the shard is recomputed, not adopted
    assert path.read_bytes() == before  # byte for byte: the dvc.lock hash returns
    assert verify.main([]) == 0


def test_flipped_bytes_anywhere_are_caught_or_change_nothing(store):
    """Every 16-byte window of a shard flipped in turn: each read fails its checksum, or the
    bytes were ones HDF5 leaves unused and every value reads back the same."""
    from features.store import check_shard, open_shard

    path = shard_path(store, "clip_image", 0)
    clean = path.read_bytes()
    shard = open_shard(path, "clip_image", {})
    reference = {name: shard.read(name) for name in shard.file}
    shard.close()
    unused = 0
    for offset in range(0, len(clean), 16):
        _flip(path, offset)
        try:
            shard = open_shard(path, "clip_image", {})
            try:
                problems = check_shard(shard, "clip_image")
                same = not problems and all(np.array_equal(shard.read(name), value, equal_nan=value.dtype.kind == "f")
                                            for name, value in reference.items())
            finally:
                shard.close()
            assert problems or same, f"offset {offset}: changed values read back without an error"
            unused += not problems
        except StoreError:
            pass  # named as damaged
        path.write_bytes(clean)
    assert unused * 16 <= 1024  # a fixed overhead of unused space, whatever the shard's size (measured 992 bytes here)


BAD_PARAMS = {  # how a params file goes wrong → what the one line must name
    "invalid YAML": ("store: [unclosed\n  dir: x", "cannot read"),
    "unknown key": (lambda p: p["store"].update(colour="red"), "params.store.colour: unknown key"),
    "wrong type": (lambda p: p["store"].update(shard_size="ten"), "params.store.shard_size: expected int"),
    "bad choice": (lambda p: p["store"].update(on_bad_image="ignore"), "params.store.on_bad_image: 'ignore' is not one of"),
    "missing section": (lambda p: p.pop("knn"), "params.knn: missing"),
    "zero shard size": (lambda p: p["store"].update(shard_size=0), "params.store.shard_size: 0 is below its minimum 1"),
    "not a mapping": ("- just\n- a list\n", "params: expected a mapping"),
    "missing file": (None, "cannot read"),
}


@pytest.mark.parametrize("case", BAD_PARAMS)
def test_a_bad_params_file_gets_one_line(case, built, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(built)
    change, expected = BAD_PARAMS[case]
    bad = tmp_path / "bad.yaml"
    if isinstance(change, str):
        bad.write_text(change)
    elif change is not None:
        params = yaml.safe_load((built / "params.yaml").read_text())
        change(params)
        bad.write_text(yaml.safe_dump(params))
    assert verify.main(["--params", str(bad)]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith(f"graphcap-verify: ParamsError: {bad}: ") and expected in line, line
    assert captured.out == ""
