import numpy as np
import pytest

from features.store import (
    FeatureReader,
    StoreError,
    open_shard,
    read_bank,
    shard_path,
    shard_slices,
    write_bank,
    write_shard,
)


def test_shard_slices_are_fixed_slices():
    assert shard_slices(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    with pytest.raises(ValueError):
        shard_slices(5, 0)


def _write_two_shards(store, provenance):
    for index, ids in enumerate([["a", "b"], ["c"]]):
        arrays = {"embeddings": np.arange(len(ids) * 3, dtype=np.float16).reshape(len(ids), 3) + 10 * index}
        write_shard(shard_path(store, "clip_image", index), "clip_image", ids, arrays, provenance, first_index=2 * index)


def test_round_trip_by_manifest_index(tmp_path):
    _write_two_shards(tmp_path, {"clip.model": "m"})
    reader = FeatureReader(tmp_path, "clip_image", shard_size=2, n_images=3, expected={"clip.model": "m"})
    reader.validate_all()
    np.testing.assert_array_equal(reader.row(2, "embeddings"), [10, 11, 12])
    np.testing.assert_array_equal(reader.row(1, "embeddings"), [3, 4, 5])
    batch = reader.rows([2, 0, 2, 1], "embeddings")  # across shards, unsorted, repeated
    np.testing.assert_array_equal(np.stack(batch), [[10, 11, 12], [0, 1, 2], [10, 11, 12], [3, 4, 5]])
    assert not list(tmp_path.rglob("*.tmp"))  # the atomic write left no temporary file


def test_provenance_mismatch_names_the_key(tmp_path):
    _write_two_shards(tmp_path, {"clip.model": "m", "clip.weights": "sha256:1"})
    with pytest.raises(StoreError, match=r"'clip.weights' differs: stored 'sha256:1', expected 'sha256:2'"):
        open_shard(shard_path(tmp_path, "clip_image", 0), "clip_image", {"clip.weights": "sha256:2"})
    with pytest.raises(StoreError, match="no key 'knn'"):
        open_shard(shard_path(tmp_path, "clip_image", 0), "clip_image", {"knn": {}})


def test_missing_shard_wrong_kind_and_changed_manifest_are_refused(tmp_path):
    _write_two_shards(tmp_path, {})
    with pytest.raises(StoreError, match="missing shard"):
        open_shard(shard_path(tmp_path, "clip_image", 7), "clip_image", {})
    with pytest.raises(StoreError, match="kind is 'clip_image', expected 'regions'"):
        open_shard(shard_path(tmp_path, "clip_image", 0), "regions", {})
    with pytest.raises(StoreError, match="image ids differ"):
        open_shard(shard_path(tmp_path, "clip_image", 0), "clip_image", {}, image_ids=["a", "x"])


def test_caption_offsets(tmp_path):
    arrays = {"embeddings": np.arange(10, dtype=np.float16).reshape(5, 2), "offsets": np.array([0, 2, 5])}
    write_shard(shard_path(tmp_path, "clip_text", 0), "clip_text", ["a", "b"], arrays, {}, first_index=0)
    reader = FeatureReader(tmp_path, "clip_text", shard_size=2, n_images=2, expected={})
    assert reader.captions([1])[0].tolist() == [[4, 5], [6, 7], [8, 9]]
    first, second, again = reader.captions([0, 1, 0])  # batched, any order, repeats
    assert first.tolist() == again.tolist() == [[0, 1], [2, 3]] and len(second) == 3


def test_keyword_banks(tmp_path):
    path = tmp_path / "keywords.h5"
    write_bank(path, "scene", ["beach", "snow"], np.ones((2, 4)), {"k": 1})
    write_bank(path, "object", ["bg", "cat"], np.zeros((2, 4)), {"k": 1})
    words, emb = read_bank(path, "scene", {"k": 1})
    assert words == ["beach", "snow"] and emb.shape == (2, 4)
    with pytest.raises(StoreError, match="'k' differs"):
        read_bank(path, "object", {"k": 2})
