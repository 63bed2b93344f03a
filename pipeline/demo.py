"""A local web page where one drops an image and sees what the captioner makes of it: the
caption of each decoding and the report's drawing (boxes, region graph, keywords with the gate).

    graphcap-demo [--model models/captioner] [--port 8000]   (then open the URL it prints)

A page of our own on the standard library's ThreadingHTTPServer rather than Gradio: one form and
one result need no framework, so the demo adds no dependency, starts at once and is tested with
urllib. An upload goes the way `graphcap-caption` takes a file (pipeline/caption.py: the
extractors of pipeline/extract.py into a scratch store, then the model), loaded once at start; a
bad upload (empty, over the size limit, not an image) gets a 4xx page of one line naming the
file and the reason, and the server keeps serving.
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import logging
import re
import signal
import sys
import tempfile
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from eval.report import CHECK, LEGEND, STYLE, draw, report_items, section
from features.store import StoreError
from pipeline.app import start
from pipeline.caption import NewImages, demo_world_note, quiet
from pipeline.params import Params
from pipeline.paths import CAPTIONER
from pipeline.runtime import device_of

log = logging.getLogger(__name__)

MAX_BYTES = 20 * 2**20  # an upload larger than this is refused (a 24 MP JPEG is ~10 MB)
FORM_SLACK = 64 * 2**10  # the multipart wrapping around the file, allowed on top of the limit
FILENAME = re.compile(rb'filename="([^"\r\n]*)"')  # a multipart part's file name, in its header

# Dropping a file on the zone submits it; choosing one with the button waits for "Caption".
SCRIPT = """<script>const f=document.getElementById('upload'),z=document.getElementById('drop');
['dragenter','dragover'].forEach(e=>z.addEventListener(e,v=>{v.preventDefault();z.classList.add('over');}));
z.addEventListener('dragleave',()=>z.classList.remove('over'));
z.addEventListener('drop',v=>{v.preventDefault();f.image.files=v.dataTransfer.files;f.submit();});</script>"""
FORM_STYLE = """#drop{display:block;padding:2em;border:2px dashed #999;background:#fff;margin-bottom:1em}
#drop.over{background:#eef}#error{color:#a00;font-weight:bold}.note{color:#666}"""


class BadUpload(ValueError):
    """An upload that cannot be captioned: the HTTP status and the one line that says why."""

    def __init__(self, status: HTTPStatus, reason: str):
        super().__init__(reason)
        self.status = status


@dataclass
class Demo:
    """What the server holds between requests: the loaded model and extractors, and the limits."""

    images: NewImages
    params: Params
    max_bytes: int = MAX_BYTES
    note: str | None = None  # said on every page (a model of the demo world, for one)

    def describe(self, name: str, data: bytes) -> str:
        """The result block for one uploaded file: its captions and drawing (inline PNG)."""
        if not data:
            raise BadUpload(HTTPStatus.BAD_REQUEST, f"{name}: empty file")
        if len(data) > self.max_bytes:
            raise BadUpload(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, too_large(name, len(data), self.max_bytes))
        with tempfile.TemporaryDirectory(prefix="graphcap-demo-") as tmp:
            path = Path(tmp) / safe_name(name)
            path.write_bytes(data)
            with self.images.features([path]) as (features, good, errors):
                if errors:  # the pipeline's own reason, naming the file as the user knows it
                    reason = " ".join(errors[0].replace(str(path), name).split())
                    raise BadUpload(HTTPStatus.UNPROCESSABLE_ENTITY, reason if name in reason else f"{name}: {reason}")
                item, = report_items(self.images.model, self.images.config, features, good, [path], [name],
                                     self.params.evaluate.decode, self.params.report.top_keywords,
                                     self.images.device, self.images.rerank)
            picture = io.BytesIO()
            draw(item, self.params.report.image_px).save(picture, format="PNG")
        return section(item, "data:image/png;base64," + base64.b64encode(picture.getvalue()).decode())

    def page(self, body: str = "") -> str:
        """The page: the upload form, then ``body`` (a result, or the line saying what went wrong)."""
        note = f"<p class='note'>Note: {html.escape(self.note)}</p>" if self.note else ""
        return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>graphcap demo</title>
<style>{STYLE}
{FORM_STYLE}</style>{CHECK}</head><body><h1>graphcap demo</h1>{note}
<form id="upload" method="post" action="/" enctype="multipart/form-data">
<label id="drop">Drop an image here (at most {self.max_bytes:,} bytes), or choose one:
<input type="file" name="image" accept="image/*"></label><button type="submit">Caption</button></form>
<p class="note">{LEGEND}</p>
{body}{SCRIPT}</body></html>
"""


def too_large(name: str, size: int, limit: int) -> str:
    return f"{name}: too large ({size:,} bytes; the limit is {limit:,})"


def safe_name(name: str) -> str:
    """A file name from an upload's, safe to write: no folders, no characters a shell would mind."""
    cleaned = re.sub(r"[^\w.\- ]", "_", Path(name.replace("\\", "/")).name).strip(" .")
    return cleaned[:120] or "upload"


def parse_upload(content_type: str, body: bytes) -> tuple[str, bytes]:
    """(file name, bytes) of the first file field of a multipart/form-data body."""
    boundary = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.startswith("multipart/form-data") or boundary is None:
        raise BadUpload(HTTPStatus.BAD_REQUEST, "not a file upload (send the form: multipart/form-data)")
    for part in body.split(b"--" + boundary[1].encode("latin-1")):
        head, blank, data = part.partition(b"\r\n\r\n")
        filename = FILENAME.search(head)
        if blank and filename:
            name = filename[1].decode("utf-8", "replace")
            if not name:
                raise BadUpload(HTTPStatus.BAD_REQUEST, "no file chosen")
            return name, data.removesuffix(b"\r\n")
    raise BadUpload(HTTPStatus.BAD_REQUEST, "the form holds no file")


class Handler(BaseHTTPRequestHandler):
    """GET / is the form; POST / with a file is the form and the file's result."""

    server: DemoServer
    timeout = 120  # a client that stalls mid-upload frees its thread

    def do_GET(self) -> None:
        if self.path.split("?")[0] != "/":
            self._send(HTTPStatus.NOT_FOUND, self.server.demo.page(error_line(f"{self.path}: no such page")))
            return
        self._send(HTTPStatus.OK, self.server.demo.page())

    def do_POST(self) -> None:
        demo, name = self.server.demo, "the upload"
        try:
            name, data = self._read_upload(demo.max_bytes)
            status, body = HTTPStatus.OK, demo.describe(name, data)
        except BadUpload as err:
            log.info("refused %s: %s", name, err)
            status, body = err.status, error_line(str(err))
        except Exception:  # a bug must not stop the server: logged, one line to the user
            log.exception("captioning %s failed", name)
            reason = f"{name}: could not be captioned (an internal error; the server's log has it)"
            status, body = HTTPStatus.INTERNAL_SERVER_ERROR, error_line(reason)
        self._send(status, demo.page(body))

    def _read_upload(self, limit: int) -> tuple[str, bytes]:
        """The uploaded file. One too large is read to its end but not kept: a browser still sending
        would not see the answer."""
        length = int(self.headers.get("Content-Length") or 0)
        content_type = self.headers.get("Content-Type", "")
        if length <= limit + FORM_SLACK:
            return parse_upload(content_type, self.rfile.read(length))
        head = self.rfile.read(min(length, FORM_SLACK))
        filename = FILENAME.search(head)
        left = length - len(head)
        while left > 0:
            chunk = self.rfile.read(min(left, 2**20))
            if not chunk:  # the client went away
                break
            left -= len(chunk)
        name = filename[1].decode("utf-8", "replace") if filename else "the upload"
        raise BadUpload(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, too_large(name, length, limit))

    def _send(self, status: HTTPStatus, page: str) -> None:
        body = page.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # the base class's signature
        log.info("%s %s", self.address_string(), format % args)


def error_line(reason: str) -> str:
    return f"<p id='error'>{html.escape(reason)}</p>"


class DemoServer(ThreadingHTTPServer):
    daemon_threads = True  # Ctrl-C does not wait for an open connection

    def __init__(self, demo: Demo, host: str = "127.0.0.1", port: int = 0):
        super().__init__((host, port), Handler)
        self.demo = demo

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


def stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", type=Path, default=CAPTIONER, help="a trained model folder")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="the parameters naming the extractors' weights (and decoding, report.image_px)")
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000, help="the port (0: any free one)")
    parser.add_argument("--max-bytes", type=int, default=MAX_BYTES, help="the largest upload accepted")
    parser.add_argument("--verbose", action="store_true", help="the extractors' logs and progress bars on stderr")
    args = parser.parse_args(argv)
    try:  # what the user gave is wrong: one line naming it, no traceback
        params = start(args.params)
        if not args.verbose:
            quiet()
            log.setLevel(logging.INFO)  # the requests, still
        images = NewImages(args.model, params, device_of(params.store.device))
        server = DemoServer(Demo(images, params, args.max_bytes, demo_world_note(args.model)), args.host, args.port)
    except (OSError, ValueError, StoreError) as err:  # ParamsError is a ValueError
        print(f"graphcap-demo: {err}", file=sys.stderr)
        return 2
    print(f"graphcap-demo: serving {server.url} (Ctrl-C stops)", flush=True)
    signal.signal(signal.SIGTERM, stop)  # a service manager's stop ends it as Ctrl-C does
    with images, server:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
