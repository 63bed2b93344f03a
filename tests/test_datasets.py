import hashlib
import json

import pytest

from corpus.datasets import DatasetError, TextConfig, build_manifest, normalize_caption, read_dataset
from tests.conftest import REAL_SAMPLE


def test_normalize_caption():
    cfg = TextConfig()
    assert normalize_caption("A Man, riding 2 waves!", cfg) == "a man riding <num> waves"
    assert normalize_caption("Two dogs . ", cfg) == "two dogs"
    assert normalize_caption("Dr. Who  at   3.5 pm.", cfg) == "dr. who at <num> pm"
    keep = TextConfig(lowercase=False, strip_punctuation=False, numbers_to_token=False)
    assert normalize_caption("A Man, riding 2 waves!", keep) == "A Man, riding 2 waves!"


def _karpathy(tmp_path, images):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"dataset": "toy", "images": images}))
    return path


def _entry(imgid, split="train", captions=("A cat.",)):
    return {"filepath": "x", "filename": f"{imgid}.jpg", "imgid": imgid, "split": split,
            "sentences": [{"raw": c} for c in captions]}


def test_restval_joins_train_and_ids_prefer_cocoid(tmp_path):
    entry = dict(_entry(0, "restval"), cocoid=391895)
    manifest = read_dataset(_karpathy(tmp_path, [entry, _entry(1, "test")]), TextConfig())
    assert [(e["id"], e["split"], e["path"]) for e in manifest["images"]] == [
        ("391895", "train", "x/0.jpg"), ("1", "test", "x/1.jpg")]
    assert manifest["images"][0]["captions"] == ["a cat"]


@pytest.mark.parametrize("images, message", [
    ([_entry(0), _entry(0)], "duplicate image id 0"),
    ([_entry(0, "dev")], "image 0: unknown split 'dev'"),
    ([dict(_entry(0), sentences=[])], "image 0: missing 'filename' or 'sentences'"),
    ([_entry(0, captions=("!!!",))], "image 0: a caption is empty"),
    ([dict(_entry(0), filepath="../elsewhere")], "image 0: path '../elsewhere/0.jpg' leaves the image root"),
    ([dict(_entry(0), filepath="/etc")], "image 0: path '/etc/0.jpg' leaves the image root"),
    ([_entry(0, captions=("a" * 5000,))], "image 0: every caption is longer than 1000 characters"),
])
def test_bad_entries_are_named(tmp_path, images, message):
    with pytest.raises(DatasetError, match=message):
        read_dataset(_karpathy(tmp_path, images), TextConfig())


def test_malformed_json_is_named(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(DatasetError, match="broken.json"):
        read_dataset(path, TextConfig())


@pytest.mark.skipif(not REAL_SAMPLE.exists(), reason=f"real sample data not present at {REAL_SAMPLE}")
def test_real_karpathy_sample_reads():
    manifest = build_manifest(REAL_SAMPLE / "dataset.json", REAL_SAMPLE / "images", TextConfig())
    assert len(manifest["images"]) == 48
    assert all(len(e["captions"]) >= 5 for e in manifest["images"])
    assert all((REAL_SAMPLE / "images" / e["path"]).is_file() for e in manifest["images"])


def test_huge_captions_missing_files_and_symlinks_out(tmp_path, caplog):
    (tmp_path / "images/x").mkdir(parents=True)
    for i in (0, 2):
        (tmp_path / "images/x" / f"{i}.jpg").write_bytes(b"jpeg")
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"not yours")
    source = _karpathy(tmp_path, [_entry(0, captions=("A cat.", "b" * 2000)), _entry(1), _entry(2)])
    manifest = build_manifest(source, tmp_path / "images", TextConfig())
    assert [e["id"] for e in manifest["images"]] == ["0", "2"]  # 1.jpg is missing: left out, named
    assert manifest["images"][0]["captions"] == ["a cat"]
    assert manifest["images"][0]["md5"] == hashlib.md5(b"jpeg").hexdigest()  # what the feature stages compare
    assert "1 caption(s) longer than 1000" in caplog.text and "1 (x/1.jpg)" in caplog.text
    (tmp_path / "images/x/2.jpg").unlink()
    (tmp_path / "images/x/2.jpg").symlink_to(outside)
    with pytest.raises(DatasetError, match="image 2: x/2.jpg leads out of the image root"):
        build_manifest(source, tmp_path / "images", TextConfig())


def test_a_wrong_image_root_stops_prepare_naming_it(tmp_path):
    (tmp_path / "images/x").mkdir(parents=True)
    (tmp_path / "images/x/0.jpg").write_bytes(b"jpeg")
    source = _karpathy(tmp_path, [_entry(0), _entry(1)])
    with pytest.raises(DatasetError, match=f"none of its 2 image files is under data.image_root {tmp_path}.*x/0.jpg"):
        build_manifest(source, tmp_path, TextConfig())  # the folder above images/


def test_the_manifest_streams_entry_by_entry_and_stays_json(tmp_path):
    from corpus.datasets import manifest_images, read_manifest, write_manifest

    manifest = {"dataset": "toy", "image_root": "x", "images": [{"id": str(i), "split": "train", "captions": ["a"]}
                                                                for i in range(3)]}
    path = tmp_path / "manifest.json"
    write_manifest(path, manifest)
    assert json.loads(path.read_text()) == manifest  # any JSON reader reads it whole
    assert path.read_text().count("\n") == 5  # the header, one line per image, the end
    assert read_manifest(path, keep=lambda e: {"id": e["id"]}) == {**manifest, "images": [{"id": "0"}, {"id": "1"},
                                                                                          {"id": "2"}]}
    by_hand = tmp_path / "by_hand.json"
    by_hand.write_text(json.dumps(manifest, indent=2))  # not the streaming layout: still read
    assert read_manifest(by_hand) == manifest and list(manifest_images(by_hand)) == manifest["images"]


def _coco_like(tmp_path, n_train=6, n_val=4):
    """A Karpathy-form JSON over both COCO folders, with the files present."""
    entries = [dict(_entry(i, "train" if i < 3 else "test"), filepath=folder, cocoid=100 + i)
               for i, folder in enumerate(["train2014"] * n_train + ["val2014"] * n_val)]
    for e in entries:
        (tmp_path / "images" / e["filepath"]).mkdir(parents=True, exist_ok=True)
        (tmp_path / "images" / e["filepath"] / e["filename"]).write_bytes(b"jpeg")
    return _karpathy(tmp_path, entries)


def test_coco2014_trains_on_train2014_and_tests_on_val2014(tmp_path):
    from corpus.datasets import SplitConfig

    split = SplitConfig(rule="coco2014", val_images=2)
    manifest = build_manifest(_coco_like(tmp_path), tmp_path / "images", TextConfig(), split=split)
    by_folder = {}
    for e in manifest["images"]:
        by_folder.setdefault(e["path"].split("/")[0], []).append(e["split"])
    assert sorted(by_folder["train2014"]) == ["train"] * 4 + ["val"] * 2 and set(by_folder["val2014"]) == {"test"}
    assert manifest["split"] == {"rule": "coco2014", "train_share": 0.8, "seed": 0, "val_images": 2}  # recorded


def test_random_split_is_seeded_and_keeps_its_share(tmp_path):
    from corpus.datasets import SplitConfig

    source = _coco_like(tmp_path, n_train=10, n_val=10)
    splits = [[e["split"] for e in build_manifest(source, tmp_path / "images", TextConfig(),
                                                  split=SplitConfig(rule="random", seed=seed, val_images=1))["images"]]
              for seed in (0, 0, 1)]
    assert splits[0] == splits[1] != splits[2]
    assert (splits[0].count("train"), splits[0].count("val"), splits[0].count("test")) == (15, 1, 4)


def test_coco2014_names_an_image_outside_both_folders(tmp_path):
    from corpus.datasets import SplitConfig

    (tmp_path / "images/x").mkdir(parents=True)
    (tmp_path / "images/x/0.jpg").write_bytes(b"jpeg")
    with pytest.raises(DatasetError, match="image 0: data.split.rule coco2014 needs it under train2014/ or val2014/"):
        build_manifest(_karpathy(tmp_path, [_entry(0)]), tmp_path / "images", TextConfig(),
                       split=SplitConfig(rule="coco2014"))
