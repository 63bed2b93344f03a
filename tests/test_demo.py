"""`graphcap-demo`: a real server on a free port, asked over HTTP: bad uploads get one line naming
the file and the reason and the server keeps serving; a real photo, uploaded in headless chromium,
gets its captions and the report's drawing."""
import io
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from pipeline.caption import NewImages, demo_world_note
from pipeline.demo import FORM_SLACK, Demo, DemoServer, main
from pipeline.params import load_params
from tests.conftest import ROOT, real_photos
from tests.helpers import CHROMIUM, CHROMIUM_FLAGS

LIMIT = 1_000_000  # bytes: the demo's limit in these tests, so "too large" is quick to send


@pytest.fixture(scope="module")
def server(trained):
    """The demo on the tests' trained model, serving from a thread."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(trained)
        params = load_params(trained / "params.yaml")
        model = trained / "models/captioner"
        with NewImages(model, params, "cpu") as images:
            demo = DemoServer(Demo(images, params, LIMIT, demo_world_note(model)), "127.0.0.1", 0)
            thread = threading.Thread(target=demo.serve_forever, daemon=True)
            thread.start()
            yield demo
            demo.shutdown()
            demo.server_close()


def post(url: str, name: str, data: bytes) -> tuple[int, str]:
    """(status, page) of the form posted with one file, as a browser sends it."""
    boundary = "----graphcapTestBoundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def error_of(page: str) -> str:
    (line,) = re.findall(r"<p id='error'>(.*?)</p>", page, flags=re.DOTALL)
    assert "\n" not in line and "Traceback" not in page
    return line


def test_the_page_is_the_upload_form(server):
    status, page = get(server.url)
    assert status == 200 and '<input type="file" name="image"' in page
    assert "trained on the built-in demo world" in page  # the model's note, as `caption` says it
    assert "://" not in page  # nothing from the network: no script, style or font
    assert get(server.url + "nowhere")[0] == 404


def bomb() -> bytes:
    """A small PNG of 225 million pixels: PIL refuses to decode it (a decompression bomb)."""
    out = io.BytesIO()
    Image.new("1", (15_000, 15_000)).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("name, data, status, reason", [
    ("empty.png", b"", 400, r"^empty\.png: empty file$"),
    ("notes.txt", b"just some text, no picture", 422, r"^notes\.txt: .*cannot read image"),
    ("big.png", b"\x89PNG" + bytes(LIMIT), 413, r"^big\.png: too large \(1,000,004 bytes; the limit is 1,000,000\)$"),
    ("huge é.jpg", bytes(LIMIT + 2 * FORM_SLACK), 413, r"^huge é\.jpg: too large \(.* bytes; the limit is 1,000,000"),
    ("bomb.png", bomb, 422, r"^bomb\.png: .*DecompressionBombError"),
], ids=["empty", "not-an-image", "too-large", "huge", "too-many-pixels"])
def test_a_bad_upload_gets_one_line_and_the_server_keeps_serving(server, name, data, status, reason):
    got, page = post(server.url, name, data() if callable(data) else data)
    assert got == status and re.search(reason, error_of(page)), page
    assert get(server.url)[0] == 200


def test_an_upload_gets_the_caption_of_each_decoding_and_the_drawing(server, trained):
    status, page = post(server.url, "shape world.png", (trained / "data/world/images/000000.png").read_bytes())
    assert status == 200, page
    captions = dict(re.findall(r"<tr><th>(\w+)</th><td class='caption'>([^<]*)</td>", page))
    assert sorted(captions) == ["beam", "greedy", "hybrid"] and all(c.strip() for c in captions.values())
    assert 'src="data:image/png;base64,' in page and "Local keywords:" in page and "mean gate" in page


def test_each_upload_is_read_afresh(server, trained):
    """The scratch store is reused between uploads, its shards never: ids repeat across calls."""
    images = server.demo.images

    def embedding(name: str) -> np.ndarray:
        with images.features([trained / "data/world/images" / name]) as (features, good, _):
            return features.readers["clip_image"].rows(good, "embeddings")[0]

    first, second, again = embedding("000000.png"), embedding("000001.png"), embedding("000000.png")
    assert not np.array_equal(first, second) and np.array_equal(first, again)


def test_an_internal_error_is_one_line_and_logged(server, monkeypatch, caplog):
    def fail(name, data):
        raise RuntimeError("a bug")

    monkeypatch.setattr(server.demo, "describe", fail)
    status, page = post(server.url, "a.png", b"whatever")
    assert status == 500 and error_of(page).startswith("a.png: could not be captioned")
    assert "a bug" not in page and "a bug" in caplog.text
    monkeypatch.undo()
    assert get(server.url)[0] == 200


def test_help_from_the_command_line():
    result = subprocess.run([sys.executable, "-m", "pipeline.demo", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, check=True)
    assert "--model" in result.stdout and "--max-bytes" in result.stdout


def test_the_command_serves_and_prints_its_url(trained, tmp_path):
    """`python -m pipeline.demo --port 0` in a project: the URL on stdout, the page served there."""
    command = [sys.executable, "-m", "pipeline.demo", "--port", "0", "--max-bytes", "1000"]
    stderr = tmp_path / "stderr.txt"  # a file, not a pipe: a full, unread pipe would block the server's logging
    with stderr.open("w") as errors, subprocess.Popen(command, cwd=trained, stdout=subprocess.PIPE, stderr=errors,
                                                       text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}) as process:
        try:
            line = process.stdout.readline()
            url = re.fullmatch(r"graphcap-demo: serving (http://127\.0\.0\.1:\d+/) \(Ctrl-C stops\)\n", line)
            assert url, line + stderr.read_text()
            status, page = get(url[1])
            assert status == 200 and "at most 1,000 bytes" in page
        finally:
            process.terminate()
            try:
                assert process.wait(timeout=30) == 0  # stopped cleanly, as by Ctrl-C
            finally:
                process.kill()  # never left behind, whatever failed


def test_a_missing_model_is_one_line(trained, monkeypatch, capsys):
    monkeypatch.chdir(trained)
    assert main(["--model", "nowhere", "--port", "0"]) == 2
    assert capsys.readouterr().err.strip().startswith("graphcap-demo: ")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_a_real_photo_uploaded_in_headless_chromium(server):
    sync_playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed "
                                          "(pip install -e '.[test]')").sync_playwright
    photo = real_photos()[0]
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS + [
            "--disable-component-update", "--disable-sync", "--no-first-run"])  # playwright's own browser: not here
        try:
            page = browser.new_page()
            page.goto(server.url)
            page.set_input_files("input[name=image]", str(photo))
            with page.expect_navigation(timeout=120_000):
                page.click("button[type=submit]")
            assert page.locator("#error").count() == 0, page.content()
            assert [t.strip() != "" for t in page.locator("td.caption").all_inner_texts()] == [True] * 3
            assert page.locator("body").get_attribute("data-images-loaded") == "1/1"  # the drawing decoded
            drawing = page.locator("section img")
            assert drawing.evaluate("i => i.naturalWidth") > 0
        finally:
            browser.close()
