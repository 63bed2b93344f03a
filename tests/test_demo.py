"""`graphcap-demo`, the Gradio app, served for real on a free port: its API called with
gradio_client (a real photo gets the caption of each decoding, the drawing and the details; bad
uploads get one line naming the file and the reason, and the app keeps serving), and the page
driven in headless chromium (an upload shows the captions and the drawing, bad files show their
line, nothing is fetched from another host). The command itself: its URL, its one-line errors."""
import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from PIL import Image

gr = pytest.importorskip("gradio", reason="gradio is not installed (pip install -e '.[test]')")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from pipeline.caption import NewImages, demo_world_note  # noqa: E402
from pipeline.demo import API_NAME, BadUpload, Demo, launch, main  # noqa: E402
from pipeline.params import load_params  # noqa: E402
from tests.conftest import REAL_SAMPLE, ROOT, real_photos  # noqa: E402
from tests.helpers import CHROMIUM, CHROMIUM_FLAGS  # noqa: E402

LIMIT = 1_000_000  # bytes: the demo's limit in these tests, so "too large" is quick to send
DECODINGS = ["beam", "greedy", "hybrid"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served(trained) -> Iterator[tuple[Demo, str]]:
    """The demo on the tests' trained model, served from a thread: (the demo, its URL)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(trained)
        params = load_params(trained / "params.yaml")
        model = trained / "models/captioner"
        with NewImages(model, params, "cpu") as images:
            demo = Demo(images, params, LIMIT, demo_world_note(model))
            blocks, url = launch(demo, "127.0.0.1", free_port())
            try:
                yield demo, url
            finally:
                blocks.close()


@pytest.fixture(scope="module")
def client(served) -> Client:
    return Client(served[1], verbose=False)


@pytest.fixture(scope="module")
def photo(trained) -> Path:
    """A real photo where the shared sample is, else an image of the demo world."""
    if (REAL_SAMPLE / "dataset.json").is_file():
        return real_photos()[0]
    return trained / "data/world/images/000000.png"


def caption_via_api(client: Client, path: Path) -> tuple[str, dict[str, str], str]:
    return client.predict(handle_file(str(path)), api_name=f"/{API_NAME}")


def assert_captioned(result: tuple[str, dict[str, str], str]) -> None:
    drawing, captions, details = result
    assert sorted(captions) == DECODINGS and all(c.strip() for c in captions.values())
    assert Image.open(drawing).size[0] > 0  # the drawing, a real PNG
    assert "Local keywords:" in details and "mean gate" in details


def test_a_real_photo_through_the_api(client, photo):
    assert_captioned(caption_via_api(client, photo))


def bomb() -> bytes:
    """A small PNG of 225 million pixels: PIL refuses to decode it (a decompression bomb)."""
    out = io.BytesIO()
    Image.new("1", (15_000, 15_000)).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("name, data, reason", [
    ("empty.png", b"", r"^empty\.png: empty file$"),
    ("notes.txt", b"just some text, no picture", r"^notes\.txt: .*cannot read image"),
    ("bomb.png", bomb, r"^bomb\.png: .*(DecompressionBombError|too large to decode)"),
], ids=["empty", "not-an-image", "too-many-pixels"])
def test_a_bad_upload_gets_one_line_and_the_app_keeps_serving(client, photo, tmp_path, name, data, reason):
    path = tmp_path / name
    path.write_bytes(data() if callable(data) else data)
    with pytest.raises(AppError) as refused:
        caption_via_api(client, path)
    assert re.search(reason, str(refused.value)) and "\n" not in str(refused.value), refused.value
    assert_captioned(caption_via_api(client, photo))


def test_an_upload_over_the_limit_is_refused_by_size(served, client, photo, tmp_path):
    """Gradio's upload route refuses it (413) before the model sees it; describe would too."""
    demo, url = served
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + bytes(LIMIT))
    request = urllib.request.Request(url + "gradio_api/upload", data=_form(big), method="POST",
                                     headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(request, timeout=30)
    assert answer.value.code == 413
    with pytest.raises(BadUpload, match=r"^big\.png: too large \(1,000,004 bytes; the limit is 1,000,000\)$"):
        demo.describe(str(big))
    assert_captioned(caption_via_api(client, photo))


def _form(path: Path) -> bytes:
    return (f'--xyz\r\nContent-Disposition: form-data; name="files"; filename="{path.name}"\r\n'
            "Content-Type: image/png\r\n\r\n").encode() + path.read_bytes() + b"\r\n--xyz--\r\n"


def test_an_internal_error_is_one_line_and_logged(served, client, photo, monkeypatch, caplog, tmp_path):
    demo, _ = served

    def fail(upload):
        raise RuntimeError("a bug")

    monkeypatch.setattr(demo, "describe", fail)
    with pytest.raises(AppError) as refused:
        caption_via_api(client, photo)
    assert str(refused.value).startswith(f"{photo.name}: could not be captioned") and "a bug" not in str(refused.value)
    assert "a bug" in caplog.text
    monkeypatch.undo()
    assert_captioned(caption_via_api(client, photo))


def test_the_app_holds_the_model_behind_a_queue_with_analytics_off(served):
    config = json.loads(urllib.request.urlopen(served[1] + "config", timeout=30).read())
    assert config["analytics_enabled"] is False
    (dependency,) = [d for d in config["dependencies"] if d.get("api_name") == API_NAME]
    assert dependency["queue"] is not False and dependency.get("concurrency_limit", 1) == 1
    assert "trained on the built-in demo world" in json.dumps(config)  # the model's note, as `caption` says it


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_uploads_in_headless_chromium(served, photo, tmp_path):
    sync_playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed "
                                          "(pip install -e '.[test]')").sync_playwright
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("just some text, no picture")
    (tmp_path / "big.png").write_bytes(b"\x89PNG" + bytes(LIMIT))
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS + [
            "--disable-component-update", "--disable-sync", "--no-first-run"])  # playwright's own browser: not here
        hosts: set[str] = set()
        try:
            page = browser.new_page()
            page.on("request", lambda r: hosts.add(urlparse(r.url).hostname or r.url.split(":")[0]))
            page.goto(served[1])
            for name, reason in (("empty.png", "empty.png: empty file"), ("notes.txt", "notes.txt: cannot read image"),
                                 ("big.png", "big.png")):
                page.set_input_files("#upload input[type=file]", str(tmp_path / name))
                line = page.get_by_text(re.compile(re.escape(reason))).first
                line.wait_for(timeout=60_000)
                assert "\n" not in line.inner_text().strip() and "Traceback" not in page.content()
                if name != "big.png":  # Gradio refuses the oversized file itself: its own words, naming it
                    page.locator("#upload button[aria-label='Clear']").first.click()
            page.reload()
            page.set_input_files("#upload input[type=file]", str(photo))
            page.locator("#captions").get_by_text("hybrid").wait_for(timeout=120_000)
            assert page.locator("#details td.caption").count() == 3
            drawing = page.locator("#drawing img")
            drawing.wait_for(timeout=30_000)
            assert drawing.evaluate("i => i.complete && i.naturalWidth") > 0
        finally:
            browser.close()
    assert hosts <= {"127.0.0.1", "data", "blob"}, hosts  # nothing from the network: no script, style or font


def test_help_from_the_command_line():
    result = subprocess.run([sys.executable, "-m", "pipeline.demo", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, check=True)
    assert "--model" in result.stdout and "--max-bytes" in result.stdout


@contextlib.contextmanager
def running(command: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """``command`` started (a Gradio app printing its URL as its first line); yields the URL and
    checks it stops cleanly, as by Ctrl-C, on SIGTERM."""
    with log.open("w") as errors, subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=errors, text=True,
                                                    env={**os.environ, **(env or {})}) as process:
        try:
            line = process.stdout.readline()  # the stderr is a file, not a pipe: a full one would block the app
            url = re.fullmatch(r"graphcap-demo: serving (http://127\.0\.0\.1:\d+/) \(Ctrl-C stops\)\n", line)
            assert url, line + log.read_text()
            yield url[1]
            process.terminate()
            assert process.wait(timeout=30) == 0, log.read_text()
        finally:
            process.kill()  # never left behind, whatever failed


def test_the_command_serves_and_prints_its_url(trained, tmp_path):
    command = [sys.executable, "-m", "pipeline.demo", "--port", str(free_port()), "--max-bytes", "1000"]
    with running(command, trained, tmp_path / "stderr.txt", {"PYTHONPATH": str(ROOT)}) as url:
        config = urllib.request.urlopen(url + "config", timeout=30).read().decode()
        assert "at most 1,000 bytes" in config


@pytest.mark.slow  # starts a second app process: `make test-slow` keeps `make test` under 10 min
def test_the_release_runs_as_a_space_outside_the_project(trained, tmp_path, photo):
    """The release folder copied away, its app.py run as a Space runs it (the bundled code, not
    the project's): the API gives the caption `graphcap-caption` gives inside the project."""
    import shutil

    from pipeline.caption import caption_files
    space = tmp_path / "space"
    shutil.copytree(trained / "models/release", space)
    assert (space / "requirements.txt").read_text().count("gradio") == 1
    env = {"GRADIO_SERVER_PORT": str(free_port()), "PYTHONPATH": ""}
    with running([sys.executable, "app.py"], space, tmp_path / "stderr.txt", env) as url:
        _, captions, _ = caption_via_api(Client(url, verbose=False), photo)
    with contextlib.chdir(trained):
        (expected,) = caption_files([photo], trained / "models/release", load_params(trained / "params.yaml"), "cpu")
    assert captions[load_params(trained / "params.yaml").evaluate.decode.method] == expected["caption"]


def test_a_missing_model_is_one_line(trained, monkeypatch, capsys):
    monkeypatch.chdir(trained)
    assert main(["--model", "nowhere", "--port", str(free_port())]) == 2
    assert capsys.readouterr().err.strip().startswith("graphcap-demo: ")


def test_a_busy_port_is_one_line_and_its_app_keeps_serving(served, client, trained, photo, monkeypatch, capsys):
    monkeypatch.chdir(trained)
    port = urlparse(served[1]).port
    assert main(["--model", str(trained / "models/captioner"), "--port", str(port)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("graphcap-demo: OSError: ") and str(port) in line, line
    assert_captioned(caption_via_api(client, photo))
