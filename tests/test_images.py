"""Image decoding: every common way a photo can be stored becomes the right upright RGB image;
what is not a regular file is refused unopened, and a decompression bomb before decoding."""
import contextlib
import os
import re
import resource
import signal
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from features.images import MAX_DECODED_BYTES, ImageError, image_batches, load_rgb, original_size

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


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail instead of hanging the suite when the block takes longer than ``seconds``: SIGALRM's
    handler raises, which also ends a blocking open() (PEP 475 retries it only if it returns)."""
    def expire(signum, frame):
        pytest.fail(f"still running after {seconds} s: blocked (in open()?)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def make_special_files(folder: Path) -> dict[Path, str]:
    """A real FIFO, broken symbolic link and Unix socket named like images in ``folder``:
    path → the reason each is refused."""
    os.mkfifo(folder / "fifo.jpg")
    (folder / "gone.png").symlink_to(folder / "deleted.png")
    with socket.socket(socket.AF_UNIX) as sock, contextlib.chdir(folder):  # relative: a socket path is short
        sock.bind("socket.png")
    return {folder / "fifo.jpg": "not a regular file (FIFO)",
            folder / "gone.png": f"broken symbolic link (to {folder / 'deleted.png'})",
            folder / "socket.png": "not a regular file (socket)"}


def test_what_is_not_a_regular_file_is_refused_unopened(tmp_path):
    special = make_special_files(tmp_path) | {Path("/dev/null"): "not a regular file (character device)",
                                              tmp_path / "missing.jpg": "no such file or folder",
                                              tmp_path: "not a regular file (folder)"}
    with deadline(5):
        for path, reason in special.items():
            with pytest.raises(ImageError, match=f"^{re.escape(f'{path}: {reason}')}$"):
                load_rgb(path)


def test_a_loader_worker_reports_a_fifo_instead_of_blocking(tmp_path):
    good = _save(Image.new("RGB", (8, 8), RED), tmp_path / "good.png")
    special = make_special_files(tmp_path)
    with deadline(20):
        items = [d for batch in image_batches([good, *special], np.asarray, batch_size=2, num_workers=1)
                 for d in batch]
    assert items[0].image.shape == (8, 8, 3)
    assert [d.error for d in items[1:]] == [f"{path}: {reason}" for path, reason in special.items()]


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("side, reason", [
    (14000, "too large to decode (DecompressionBombError: Image size (196000000 pixels) exceeds limit of "
            "178956970 pixels"),  # Pillow's own limit, at open
    (10000, "too large to decode (10000x10000 pixels in mode 1: 286 MiB decoded, the limit is 256 MiB)"),
], ids=["pillow-limit", "budget"])
def test_decompression_bombs_are_refused_before_decoding(tmp_path, side, reason):
    path = _save(Image.new("1", (side, side)), tmp_path / "bomb.png")  # 12-24 KB on disk, GBs decoded
    assert path.stat().st_size < 30_000 and MAX_DECODED_BYTES == 256 * 2**20
    before = _max_rss_mb()
    with deadline(5), pytest.raises(ImageError, match=f"^{re.escape(f'{path}: {reason}')}"):
        load_rgb(path)
    assert _max_rss_mb() - before < 100  # refused from the header: no pixel decoded


def test_jpeg_draft_mode_brings_a_large_jpeg_within_the_budget(tmp_path):
    path = _save(Image.new("RGB", (4000, 3000), RED), tmp_path / "12mp.jpg", quality=50)  # 34 MiB decoded
    with pytest.raises(ImageError, match="4000x3000 pixels in mode RGB: 34 MiB decoded, the limit is 10 MiB"):
        load_rgb(path, max_bytes=10 * 2**20)
    assert load_rgb(path, max_side=500, max_bytes=10 * 2**20).size == (500, 375)  # decoded at 1/4: 1000x750
