"""COCO's caption annotation files and Flickr's token files as data sets: told by content,
read into the same manifest as Karpathy's JSON, with the paper's splits, through the real
`prepare` stage; a file of no known format, or without splits under the karpathy rule, is one line."""
import json

import pytest
from PIL import Image

from corpus.datasets import DatasetError, SplitConfig, TextConfig, build_manifest
from pipeline.app import load_manifest
from tests.conftest import tiny_project


def write_coco(folder, split: str, ids: list[int]) -> None:
    """captions_<split>.json in COCO's format (two captions per image, one image without any)
    and the images under <folder>/images/<split>/."""
    images = [{"id": i, "file_name": f"COCO_{split}_{i:012d}.jpg", "height": 32, "width": 32} for i in ids]
    images.append({"id": 999999, "file_name": f"COCO_{split}_000000999999.jpg", "height": 32, "width": 32})
    notes = [{"id": 10 * i + k, "image_id": i, "caption": f"A Dog on {k + 1} Skateboards."} for i in ids for k in (0, 1)]
    (folder / "annotations").mkdir(exist_ok=True)
    (folder / "annotations" / f"captions_{split}.json").write_text(
        json.dumps({"info": {}, "licenses": [], "images": images, "annotations": notes}))
    (folder / "images" / split).mkdir(parents=True, exist_ok=True)
    for image in images[:-1]:
        Image.new("RGB", (32, 32), (200, 30, 30)).save(folder / "images" / split / image["file_name"])


def write_flickr(folder, name: str = "results_20130124.token") -> None:
    lines = [f"{1000 + i}_ab.jpg#{k}\tA child in a pink dress climbs stairs number {k} ." for i in range(5) for k in range(5)]
    (folder / name).write_text("\n".join(lines) + "\n")
    (folder / "images").mkdir(exist_ok=True)
    for i in range(5):
        Image.new("RGB", (32, 32)).save(folder / "images" / f"{1000 + i}_ab.jpg")


def test_coco_annotation_folder_gives_the_papers_split(tmp_path):
    write_coco(tmp_path, "train2014", [1, 2, 3, 4])
    write_coco(tmp_path, "val2014", [5, 6])
    split = SplitConfig(rule="coco2014", val_images=1)
    manifest = build_manifest(tmp_path / "annotations", tmp_path / "images", TextConfig(), split=split)
    by_id = {e["id"]: e for e in manifest["images"]}
    assert sorted(by_id) == ["1", "2", "3", "4", "5", "6"]  # the image without captions is left out
    assert by_id["5"]["path"] == "val2014/COCO_val2014_000000000005.jpg" and by_id["5"]["split"] == "test"
    assert sorted(e["split"] for i, e in by_id.items() if int(i) <= 4) == ["train", "train", "train", "val"]
    assert by_id["1"]["captions"] == ["a dog on <num> skateboards", "a dog on <num> skateboards"]
    assert by_id["1"]["raw"] == ["A Dog on 1 Skateboards.", "A Dog on 2 Skateboards."]
    assert manifest["dataset"] == "coco"
    one_file = build_manifest(tmp_path / "annotations/captions_val2014.json", tmp_path / "images", TextConfig(),
                              split=SplitConfig(rule="coco2014", val_images=0))
    assert [e["split"] for e in one_file["images"]] == ["test", "test"]


def test_prepare_stage_reads_coco_and_flickr_files(tmp_path, monkeypatch):
    from pipeline.stages import prepare

    write_coco(tmp_path, "train2014", [1, 2, 3])
    write_coco(tmp_path, "val2014", [4])
    data = {"dataset": str(tmp_path / "annotations"), "image_root": str(tmp_path / "images"),
            "split": {"rule": "coco2014", "val_images": 1}}
    (tmp_path / "coco").mkdir()
    project = tiny_project(tmp_path / "coco", (prepare,), data=data)
    monkeypatch.chdir(project)
    assert [e["split"] for e in load_manifest()["images"]].count("test") == 1
    write_flickr(tmp_path)
    data = {"dataset": str(tmp_path / "results_20130124.token"), "image_root": str(tmp_path / "images"),
            "split": {"rule": "random", "train_share": 0.8, "val_images": 1}}
    (tmp_path / "flickr").mkdir()
    project = tiny_project(tmp_path / "flickr", (prepare,), data=data)
    monkeypatch.chdir(project)
    manifest = load_manifest()
    assert manifest["dataset"] == "flickr30k" and len(manifest["images"]) == 5
    assert sorted(e["split"] for e in manifest["images"]) == ["test", "train", "train", "train", "val"]
    assert manifest["images"][0]["id"] == "1000_ab" and len(manifest["images"][0]["captions"]) == 5


@pytest.mark.parametrize("content, message", [
    ('{"something": 1}', "not a caption file of a known format"),
    ("just some text\n", "not a caption file of a known format"),
    ('{"images": [], "annotations": [{"image_id": 1}]}', "annotation #0 lacks 'image_id' or a 'caption' text"),
    ("1.jpg#0\tA cat.\nno tab here\n", "line 2 is not '<image file>#<n><tab><caption>'"),
    ('{"images": [', "not valid JSON"),
])
def test_a_file_of_no_known_format_is_one_line(tmp_path, content, message):
    path = tmp_path / "captions.txt"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message) as caught:
        build_manifest(path, tmp_path, TextConfig(), split=SplitConfig(rule="random"))
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_files_without_splits_need_a_split_rule(tmp_path):
    write_flickr(tmp_path, "Flickr8k.token.txt")
    with pytest.raises(DatasetError, match="come without splits .* set data.split.rule to coco2014 .* or random"):
        build_manifest(tmp_path / "Flickr8k.token.txt", tmp_path / "images", TextConfig())
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="a folder, but without COCO caption files"):
        build_manifest(empty, tmp_path, TextConfig())
