"""An image's features and caption depend only on the image and the settings, not on the other
images of its batch or shard: the detector pads each image only to its own size."""
import numpy as np
import torch
from PIL import Image

from features.detection import same_shape_groups
from pipeline.caption import NewImages
from pipeline.params import load_params
from tests.conftest import real_photos

# what may differ between one image's rows computed alone and in a batch: float16 rounding of a
# batched convolution's summation order; every row here agreed far closer (measured max 0)
ATOL = 1e-3


def _features(images: NewImages, paths: list) -> dict[str, list[np.ndarray]]:
    """Each photo's stored rows, by photo: regions (features, boxes, labels) and clip_image."""
    with images.features(paths) as (features, good, _):
        assert good == list(range(len(paths)))
        regions, clip = features.readers["regions"], features.readers["clip_image"]
        return {"features": regions.rows(good, "features"), "boxes": regions.rows(good, "boxes"),
                "labels": regions.rows(good, "labels"), "counts": regions.rows(good, "counts"),
                "clip": clip.rows(good, "embeddings")}


def test_a_photo_alone_and_in_a_batch_of_other_sizes_gets_the_same_features_and_caption(trained, monkeypatch):
    monkeypatch.chdir(trained)
    photos = real_photos()
    sizes = {Image.open(p).size for p in photos[:16]}
    assert len(sizes) > 3  # the batch really mixes sizes, so padding to the largest would show
    params = load_params(trained / "params.yaml")  # regions.batch_size 16: the 16 photos are one batch
    with NewImages(trained / "models/captioner", params, torch.device("cpu")) as images:
        for k in (0, 5):  # the first photo of the batch, and one from its middle
            alone, batched = _features(images, [photos[k]]), _features(images, photos[:16])
            for name, rows in alone.items():
                np.testing.assert_allclose(rows[0].astype(np.float32), batched[name][k].astype(np.float32),
                                           atol=ATOL, err_msg=f"{photos[k].name}: {name}")
            assert images.caption([photos[k]])[0]["caption"] == images.caption(photos[:16])[k]["caption"]


def test_same_shape_groups_keeps_order_within_each_shape():
    shapes = [(1, 3, 96, 128), (1, 3, 128, 96), (1, 3, 96, 128), (1, 3, 128, 128)]
    assert same_shape_groups(shapes) == [[0, 2], [1], [3]]
