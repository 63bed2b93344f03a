"""Image decoding: every common way a photo can be stored becomes the right upright RGB image."""
import numpy as np
import pytest
from PIL import Image

from features.images import ImageError, image_batches, load_rgb, original_size

RED = (200, 30, 30)


def _save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


@pytest.mark.parametrize("name, make", [
    ("gray.png", lambda: Image.new("L", (40, 30), 128)),
    ("cmyk.jpg", lambda: Image.new("RGB", (40, 30), RED).convert("CMYK")),
    ("palette.png", lambda: Image.new("RGB", (40, 30), RED).convert("P")),
    ("sixteen.png", lambda: Image.fromarray(np.full((30, 40), 40000, np.uint16))),
    ("alpha.png", lambda: Image.new("RGBA", (40, 30), (*RED, 0))),
    ("photo.webp", lambda: Image.new("RGB", (40, 30), RED)),
])
def test_modes_become_rgb(tmp_path, name, make):
    image = load_rgb(_save(make(), tmp_path / name))
    assert image.mode == "RGB" and image.size == (40, 30)
    pixel = image.getpixel((5, 5))
    if name == "alpha.png":
        assert pixel == (255, 255, 255)  # fully transparent composites onto white, not black
    elif name == "sixteen.png":
        assert pixel == (156, 156, 156)  # the high byte of 40000
    elif name in ("cmyk.jpg", "palette.png", "photo.webp"):
        assert abs(pixel[0] - RED[0]) < 20 and pixel[1] < 60


def test_exif_rotation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), RED)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    path = _save(image, tmp_path / "rotated.jpg", exif=exif)
    assert load_rgb(path).size == (20, 40)
    assert original_size(path) == (40, 20)  # (height, width) of the upright image


def test_animated_uses_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (20, 20), c) for c in (RED, (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert load_rgb(path).getpixel((1, 1))[0] > 150


def test_huge_images_are_decoded_small(tmp_path):
    path = _save(Image.new("RGB", (6000, 4000), RED), tmp_path / "24mp.jpg", quality=50)
    image = load_rgb(path, max_side=1000)
    assert max(image.size) == 1000 and original_size(path) == (4000, 6000)


@pytest.mark.parametrize("name, content", [
    ("empty.jpg", b""), ("text.png", b"hello"), ("truncated.jpg", None), ("tiny.png", "1x1"),
])
def test_unusable_files_are_named(tmp_path, name, content):
    path = tmp_path / name
    if content is None:
        _save(Image.new("RGB", (64, 64), RED), path)
        path.write_bytes(path.read_bytes()[:200])
    elif content == "1x1":
        _save(Image.new("RGB", (1, 1), RED), path)
    else:
        path.write_bytes(content)
    with pytest.raises(ImageError, match=name):
        load_rgb(path)


def test_loader_reports_rejects_and_keeps_order(tmp_path):
    good = [_save(Image.new("RGB", (8 + i, 8), RED), tmp_path / f"ök {i}.png") for i in range(3)]
    bad = tmp_path / "bad name.png"
    bad.write_bytes(b"x")
    paths = [good[0], bad, good[1], good[2]]
    items = [d for batch in image_batches(paths, np.asarray, batch_size=3, num_workers=0) for d in batch]
    assert [d.index for d in items] == [0, 1, 2, 3]
    assert items[1].image is None and "bad name.png" in items[1].error
    assert items[3].image.shape == (8, 10, 3)
