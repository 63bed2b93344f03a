"""`graphcap-demo`: a real server on a free port, asked over HTTP: bad uploads get one line naming
the file and the reason and the server keeps serving; a real photo, uploaded in headless chromium,
gets its captions and the report's drawing. Clients that misbehave at the HTTP level (too slow, too
many, a bad length or boundary, gone mid-request, control bytes) are driven over raw sockets, and
after each the server still captions a real image within seconds."""
import contextlib
import html
import io
import logging
import os
import re
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.caption import NewImages, demo_world_note
from pipeline.demo import Demo, main
from pipeline.demo_server import FORM_SLACK, DemoServer
from pipeline.params import load_params
from tests.conftest import REAL_SAMPLE, ROOT, real_photos
from tests.helpers import CHROMIUM, CHROMIUM_FLAGS

LIMIT = 1_000_000  # bytes: the demo's limit in these tests, so "too large" is quick to send
BOUNDARY = "----graphcapTestBoundary"
EVIL = "\x1b[2J\x07\x08\x7f"  # a terminal's clear-screen, a bell, a backspace, a delete


@contextlib.contextmanager
def serving(demo: Demo, **limits: int) -> Iterator[DemoServer]:
    """``demo`` served from a thread on a free port."""
    server = DemoServer(demo, "127.0.0.1", 0, **limits)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def server(trained):
    """The demo on the tests' trained model, serving from a thread."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(trained)
        params = load_params(trained / "params.yaml")
        model = trained / "models/captioner"
        with NewImages(model, params, "cpu") as images, serving(Demo(images, params, LIMIT,
                                                                     demo_world_note(model))) as demo:
            yield demo


@pytest.fixture(scope="module")
def photo(trained) -> Path:
    """A real photo where the shared sample is, else an image of the demo world."""
    if (REAL_SAMPLE / "dataset.json").is_file():
        return real_photos()[0]
    return trained / "data/world/images/000000.png"


def form(name: str, data: bytes, boundary: str = BOUNDARY) -> bytes:
    """A multipart/form-data body holding one file, as a browser sends it."""
    return (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()


def post(url: str, name: str, data: bytes, timeout: float = 120) -> tuple[int, str]:
    """(status, page) of the form posted with one file, as a browser sends it."""
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    request = urllib.request.Request(url, form(name, data), headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
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
    ("bomb.png", bomb, 422, r"^bomb\.png: .*(DecompressionBombError|too large to decode)"),
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


def head(length: int | str | None = None, path: str = "/", boundary: str = BOUNDARY) -> bytes:
    """A POST's request line and headers; ``length`` None: no Content-Length."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: multipart/form-data; boundary={boundary}"]
    lines += [] if length is None else [f"Content-Length: {length}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def connect(server: DemoServer) -> socket.socket:
    return socket.create_connection(server.server_address[:2], timeout=10)


def answer(sock: socket.socket) -> tuple[int, str]:
    """(status, page) of the answer on ``sock``, read until the server closes the connection."""
    data = b""
    with contextlib.suppress(ConnectionResetError):  # the server closed on unread bytes: what came first counts
        while chunk := sock.recv(2**16):
            data += chunk
    status = re.match(rb"HTTP/1\.[01] (\d{3}) ", data)
    assert status, data[:300]
    return int(status[1]), data.partition(b"\r\n\r\n")[2].decode()


def exchange(server: DemoServer, request: bytes) -> tuple[int, str]:
    """(status, page) of ``request`` sent whole on a connection of its own."""
    with connect(server) as sock:
        sock.sendall(request)
        return answer(sock)


def still_serving(server: DemoServer, photo: Path) -> None:
    """A real image, uploaded as a browser does, is captioned within a few seconds."""
    began = time.monotonic()
    status, page = post(server.url, photo.name, photo.read_bytes(), timeout=10)
    assert status == 200 and page.count("class='caption'") == 3, page
    assert time.monotonic() - began < 10


@pytest.mark.parametrize("cut", [len(head(1)) + 5, 20], ids=["trickled-body", "trickled-headers"])
def test_a_client_sending_too_slowly_gets_408_and_frees_its_thread(server, photo, monkeypatch, caplog, cut):
    """A byte every 0.25 s would keep each read alive for ever: the request's one deadline ends it."""
    caplog.set_level(logging.INFO, logger="pipeline.demo_server")
    monkeypatch.setattr(server.demo, "upload_seconds", 2.0)
    body = form("slow.png", bytes(200))
    request = head(len(body)) + body
    began = time.monotonic()
    with connect(server) as sock:
        client = f"127.0.0.1:{sock.getsockname()[1]} "
        sock.sendall(request[:cut])
        for byte in request[cut:]:
            if select.select([sock], [], [], 0.25)[0]:  # answered
                break
            sock.sendall(bytes([byte]))
        status, page = answer(sock)  # to the server's close: never waits for the socket's timeout
    assert status == 408 and error_of(page) == "the request did not arrive within 2 s: send it again"
    assert 2 <= time.monotonic() - began < 4
    monkeypatch.undo()
    still_serving(server, photo)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(client)]
    assert lines == [f'{client}"POST / HTTP/1.1" 408 - (the request did not arrive within 2 s: send it again)']


def test_one_client_too_many_gets_503_at_once(server, photo):
    """Two clients sending half a request hold both places of a 2-client server; a third gets 503
    at once (no thread waiting for a place), and once they leave the server serves again."""
    with serving(server.demo, max_clients=2) as small:
        holders = [connect(small) for _ in range(2)]
        for holder in holders:
            holder.sendall(b"POST / HTTP/1.1\r\n")
        began = time.monotonic()
        status, page = exchange(small, b"GET / HTTP/1.0\r\n\r\n")
        assert status == 503 and time.monotonic() - began < 2
        assert error_of(page) == "the demo is busy (2 requests at once): try again in a moment"
        for holder in holders:
            holder.close()
        deadline = time.monotonic() + 5
        while get(small.url)[0] == 503 and time.monotonic() < deadline:  # the holders' threads are ending
            time.sleep(0.05)
        still_serving(small, photo)


def test_a_declared_length_over_the_limit_is_refused_before_the_body(server, photo):
    """A petabyte declared, not a byte of it sent: 413 at once, nothing allocated or waited for."""
    began = time.monotonic()
    with connect(server) as sock:
        sock.sendall(head(10**15))
        status, page = answer(sock)
    assert status == 413 and time.monotonic() - began < 2
    assert error_of(page) == "the upload: too large (1,000,000,000,000,000 bytes; the limit is 1,000,000)"
    still_serving(server, photo)


@pytest.mark.parametrize("length, status, reason", [
    ("many", 400, "Content-Length 'many' is not a number of bytes"),
    ("-5", 400, "Content-Length '-5' is not a number of bytes"),
    ("1e3", 400, "Content-Length '1e3' is not a number of bytes"),
    (None, 411, "the upload has no Content-Length (send the form as a browser does; a chunked body is not read)"),
], ids=["not-a-number", "negative", "float", "missing"])
def test_a_bad_content_length_gets_one_line(server, photo, length, status, reason):
    body = form("a.png", b"whatever")
    got, page = exchange(server, head(length) + body)
    assert got == status and error_of(page) == html.escape(reason)
    still_serving(server, photo)


ANOTHER = "the form's body does not use the boundary its Content-Type names"


@pytest.mark.parametrize("body, reason", [
    (form("a.png", b"whatever", boundary="----anotherBoundary"), ANOTHER),
    (form("a.png", b"whatever", boundary=BOUNDARY + "X"), ANOTHER),  # the header's boundary is a prefix of it
    (form("a.png", b"whatever").removesuffix(f"\r\n--{BOUNDARY}--\r\n".encode()),
     "the form's body is cut short (its closing boundary is missing)"),
], ids=["another-boundary", "a-longer-boundary", "no-closing-boundary"])
def test_a_body_not_delimited_by_its_boundary_gets_400(server, photo, body, reason):
    status, page = exchange(server, head(len(body)) + body)
    assert status == 400 and error_of(page) == html.escape(reason)
    still_serving(server, photo)


@pytest.mark.parametrize("how", ["closes-mid-body", "resets-mid-body", "resets-before-the-answer"])
def test_a_client_that_goes_away_is_one_line_in_the_log(server, photo, caplog, capsys, how):
    caplog.set_level(logging.INFO, logger="pipeline.demo_server")
    body = form("notes.txt", b"no picture") if how.endswith("answer") else form(photo.name, photo.read_bytes())
    request = head(len(body)) + body
    with connect(server) as sock:
        client = f"127.0.0.1:{sock.getsockname()[1]} "
        sock.sendall(request if how.endswith("answer") else request[:len(request) // 2])
        if how.startswith("resets"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close: RST, not FIN
    still_serving(server, photo)  # and by then that client's thread has long ended
    lines = [r for r in caplog.records if r.name == "pipeline.demo_server" and r.getMessage().startswith(client)]
    dropped = [r.getMessage() for r in lines if r.levelno == logging.WARNING]
    assert len(dropped) == 1 and "client error, connection dropped: " in dropped[0], [r.getMessage() for r in lines]
    assert len(lines) == (2 if how.endswith("answer") else 1)  # with the answer's own line, when one was sent
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in lines)
    assert "Traceback" not in caplog.text + capsys.readouterr().err


def test_control_bytes_of_a_request_are_escaped_in_the_log(server, photo, caplog):
    """In the path, in a header and in the file name: each logged as its escape."""
    caplog.set_level(logging.INFO, logger="pipeline.demo_server")
    assert exchange(server, f"GET /{EVIL} HTTP/1.0\r\n\r\n".encode("latin-1"))[0] == 404
    assert exchange(server, head(f"1{EVIL}") + b"x")[0] == 400
    body = form(f"notes{EVIL}.txt", b"no picture")
    assert exchange(server, head(len(body)) + body)[0] == 422
    still_serving(server, photo)
    lines = [r.getMessage() for r in caplog.records if r.name == "pipeline.demo_server"]
    assert all(line.isprintable() for line in lines), lines
    assert sum(r"\x1b[2J\x07\x08\x7f" in line for line in lines) == 3, lines


def test_a_port_out_of_range_is_one_argparse_error(server, photo, capsys):
    for port in ("99999", "-1", "http"):
        with pytest.raises(SystemExit) as exit:
            main(["--port", port])
        err = capsys.readouterr().err
        assert exit.value.code == 2 and "Traceback" not in err
        assert err.splitlines()[-1].endswith(f"--port: {port!r} is not a port (1..65535, or 0 for any free one)")
    still_serving(server, photo)


def test_a_busy_port_is_one_line_and_its_server_keeps_serving(server, trained, photo, monkeypatch, capsys):
    """A second demo on the first one's port: said at once (before a model loads), the first undisturbed."""
    monkeypatch.chdir(trained)
    port = server.server_address[1]
    assert main(["--model", "nowhere", "--port", str(port)]) == 2
    assert capsys.readouterr().err == (f"graphcap-demo: OSError: cannot listen on 127.0.0.1:{port}: the port is in use "
                                       "(by another server? --port 0 takes any free one)\n")
    still_serving(server, photo)
