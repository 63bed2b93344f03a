"""A local web page where one drops an image and sees what the captioner makes of it: the
caption of each decoding and the report's drawing (boxes, region graph, keywords with the gate).

    graphcap-demo [--model models/captioner] [--port 8000]   (then open the URL it prints)

A page of our own on the standard library's ThreadingHTTPServer rather than Gradio: one form and
one result need no framework, so the demo adds no dependency, starts at once and is tested with
urllib. An upload goes the way `graphcap-caption` takes a file (pipeline/caption.py: the
extractors of pipeline/extract.py into a scratch store, then the model), loaded once at start; a
bad upload (empty, over the size limit, not an image) gets a 4xx page of one line naming the
file and the reason, and the server keeps serving.

What a client can hold is bounded: a request must arrive whole within `upload_seconds` (else
408), at most `max_clients` are served at once (one more gets 503 at once), a body is read in
chunks and a declared length over the limit is refused before its body is read (413). A client
that goes away is one line in the log, and every logged line has its control characters escaped.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import html
import io
import itertools
import logging
import math
import re
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from eval.report import CHECK, LEGEND, STYLE, draw, report_items, section
from pipeline.app import run_command, start
from pipeline.caption import NewImages, demo_world_note, quiet
from pipeline.params import Params
from pipeline.paths import CAPTIONER
from pipeline.runtime import device_of

log = logging.getLogger(__name__)

MAX_BYTES = 20 * 2**20  # an upload larger than this is refused (a 24 MP JPEG is ~10 MB)
FORM_SLACK = 64 * 2**10  # the multipart wrapping around the file, allowed on top of the limit
FILENAME = re.compile(rb'filename="([^"\r\n]*)"')  # a multipart part's file name, in its header
UPLOAD_SECONDS = 30.0  # a request (its line, headers and body) must arrive whole within this
MAX_CLIENTS = 8  # connections served at once; one more is answered 503 at once
CHUNK = 2**16  # a body is read in pieces of at most this size, never all at once
GRACE = 0.5  # seconds a refused upload waits for its first bytes, to name its file

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


class Overdue(Exception):
    """A request that did not arrive within its time (not a TimeoutError: http.server would swallow it)."""


class ClientGone(ConnectionError):
    """The client closed its connection before its request had arrived."""


@dataclass
class Demo:
    """What the server holds between requests: the loaded model and extractors, and the limits."""

    images: NewImages
    params: Params
    max_bytes: int = MAX_BYTES
    note: str | None = None  # said on every page (a model of the demo world, for one)
    upload_seconds: float = UPLOAD_SECONDS  # read at each connection: a change applies to the next one

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


def printable(text: str) -> str:
    """``text`` fit for a log line: each control character (a line break, a terminal's escape
    sequence, a bell) written as its escape, ``\\x1b``, so that no client can forge or garble lines."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def parse_upload(content_type: str, body: bytes) -> tuple[str, bytes]:
    """(file name, bytes) of the first file field of a multipart/form-data body, whose parts must
    be delimited by the boundary that ``content_type`` names, the last one closed."""
    boundary = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.startswith("multipart/form-data") or boundary is None:
        raise BadUpload(HTTPStatus.BAD_REQUEST, "not a file upload (send the form: multipart/form-data)")
    delimiter = b"\r\n--" + boundary[1].encode("latin-1")
    _preamble, *parts = (b"\r\n" + body).split(delimiter)  # the delimiter's CRLF belongs to it, not to the data
    if not parts or not all(part.startswith((b"\r\n", b"--")) for part in parts):  # a part, or the closing one
        raise BadUpload(HTTPStatus.BAD_REQUEST, "the form's body does not use the boundary its Content-Type names")
    if not any(part.startswith(b"--") for part in parts):
        raise BadUpload(HTTPStatus.BAD_REQUEST, "the form's body is cut short (its closing boundary is missing)")
    for part in itertools.takewhile(lambda part: not part.startswith(b"--"), parts):
        head, blank, data = part.partition(b"\r\n\r\n")
        filename = FILENAME.search(head)
        if blank and filename:
            name = filename[1].decode("utf-8", "replace")
            if not name:
                raise BadUpload(HTTPStatus.BAD_REQUEST, "no file chosen")
            return name, data
    raise BadUpload(HTTPStatus.BAD_REQUEST, "the form holds no file")


class DeadlineReader(io.RawIOBase):
    """A socket's incoming bytes with one deadline for them all: each read waits at most for what is
    left (a socket's own timeout starts again at every byte, so a client sending one byte now and
    then would hold its thread for ever). ``patience`` bounds one wait further."""

    def __init__(self, sock: socket.socket, seconds: float):
        self.sock, self.seconds, self.end = sock, seconds, time.monotonic() + seconds
        self.patience = math.inf

    def readable(self) -> bool:
        return True

    def left(self) -> float:
        return self.end - time.monotonic()

    def readinto(self, buffer: Any) -> int:
        wait = min(self.left(), self.patience)
        try:
            if wait <= 0:
                raise TimeoutError
            self.sock.settimeout(wait)
            return self.sock.recv_into(buffer)
        except TimeoutError:
            if self.left() > 0:  # only ``patience`` ran out
                raise
            raise Overdue(f"the request did not arrive within {self.seconds:g} s: send it again") from None


class Handler(BaseHTTPRequestHandler):
    """GET / is the form; POST / with a file is the form and the file's result. One request per
    connection (HTTP/1.0), which must arrive within the demo's ``upload_seconds``."""

    server: DemoServer
    requestline, request_version = "", "HTTP/1.0"  # until a request line is read: a 408 needs them
    why: str | None = None  # the reason of a refusal, said on the request's log line
    drain = False  # the body is left (partly) unread: read it away after the answer

    def setup(self) -> None:
        super().setup()
        self.clock = DeadlineReader(self.connection, self.server.demo.upload_seconds)
        self.rfile.close()
        self.rfile = io.BufferedReader(self.clock)

    def handle(self) -> None:
        """The request; a client that goes away is one line in the log, never a traceback."""
        try:
            try:
                self.handle_one_request()
            except Overdue as err:
                self._refuse(HTTPStatus.REQUEST_TIMEOUT, str(err))
            if self.drain:
                self._linger()
        except (ConnectionError, TimeoutError) as err:  # TimeoutError: an answer the client does not read
            self._log(logging.WARNING, f"client error, connection dropped: {type(err).__name__}: {err}")

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
        except (Overdue, ConnectionError):
            raise  # the client's doing, not the upload's: handle() answers or logs it
        except BadUpload as err:
            self._refuse(err.status, str(err))
            return
        except Exception:  # a bug must not stop the server: logged, one line to the user
            log.exception("captioning %s failed", printable(name))
            reason = f"{name}: could not be captioned (an internal error; the server's log has it)"
            status, body = HTTPStatus.INTERNAL_SERVER_ERROR, error_line(reason)
            self.why = reason
        self._send(status, demo.page(body))

    def _read_upload(self, limit: int) -> tuple[str, bytes]:
        """The uploaded file, its body read in chunks as it comes. A declared length over the limit
        is refused before the body is read (the first bytes that come at once name the file)."""
        self.drain = True  # until the body has been read to its end
        length = self._content_length()
        if length > limit + FORM_SLACK:
            filename = FILENAME.search(self._first_bytes(GRACE))
            name = filename[1].decode("utf-8", "replace") if filename else "the upload"
            raise BadUpload(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, too_large(name, length, limit))
        body = bytearray()  # grown as bytes come: a declared length is a claim, not an allocation
        while len(body) < length:
            chunk = self.rfile.read1(min(CHUNK, length - len(body)))
            if not chunk:
                raise ClientGone(f"the client closed the connection after {len(body):,} of {length:,} bytes")
            body += chunk
        self.drain = False
        return parse_upload(self.headers.get("Content-Type", ""), bytes(body))

    def _content_length(self) -> int:
        """The body's declared length: 411 without one (or a chunked body), 400 if it is no count."""
        values = self.headers.get_all("Content-Length") or []
        if not values or "Transfer-Encoding" in self.headers:
            raise BadUpload(HTTPStatus.LENGTH_REQUIRED, "the upload has no Content-Length (send the form as a "
                                                        "browser does; a chunked body is not read)")
        if len({v.strip() for v in values}) > 1 or not re.fullmatch(r"[0-9]{1,18}", values[0].strip()):
            raise BadUpload(HTTPStatus.BAD_REQUEST, f"Content-Length {', '.join(values)!r} is not a number of bytes")
        return int(values[0])

    def _first_bytes(self, wait: float) -> bytes:
        """What of the body comes within ``wait`` seconds (at most FORM_SLACK bytes), else nothing."""
        self.clock.patience = wait
        try:
            return self.rfile.read1(FORM_SLACK)
        except TimeoutError:
            return b""
        finally:
            self.clock.patience = math.inf

    def _refuse(self, status: HTTPStatus, reason: str) -> None:
        self.why = reason
        self._send(status, self.server.demo.page(error_line(reason)))

    def _send(self, status: HTTPStatus, page: str) -> None:
        body = page.encode("utf-8")
        self.connection.settimeout(self.server.demo.upload_seconds)  # for the client to take the answer
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _linger(self) -> None:
        """Read away what the client still sends, until it stops or its request's time is up: closing
        on unread bytes would reset the connection, and a browser still sending would lose the answer."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
            while (left := self.clock.left()) > 0:
                self.connection.settimeout(left)
                if not self.connection.recv(CHUNK):
                    break
        except OSError:  # out of time, or the client gone: it has had its answer
            pass

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """The request's one line, with the reason when it was refused."""
        code = int(code) if isinstance(code, HTTPStatus) else code
        self.log_message('"%s" %s %s%s', self.requestline, code, size, f" ({self.why})" if self.why else "")

    def log_message(self, format: str, *args: object) -> None:  # the base class's signature
        self._log(logging.INFO, format % args)

    def _log(self, level: int, message: str) -> None:
        host, port = self.client_address[:2]
        log.log(level, "%s:%s %s", host, port, printable(message))


def error_line(reason: str) -> str:
    return f"<p id='error'>{html.escape(reason)}</p>"


class DemoServer(ThreadingHTTPServer):
    """The demo on a port: a thread for each connection, at most ``max_clients`` at once. ``demo``
    may be given later (``main`` binds the port first, so that a busy one is said at once)."""

    daemon_threads = True  # Ctrl-C does not wait for an open connection
    demo: Demo

    def __init__(self, demo: Demo | None, host: str = "127.0.0.1", port: int = 0, max_clients: int = MAX_CLIENTS):
        super().__init__((host, port), Handler)
        if demo is not None:
            self.demo = demo
        self.max_clients = max_clients
        self.slots = threading.BoundedSemaphore(max_clients)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self._busy(request, client_address)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: none will give the slot back
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def _busy(self, request: socket.socket, client_address: Any) -> None:
        """503 from the accepting thread, which never waits on a client: a short answer sent without
        blocking, what the client has already sent read away (closing on it would reset), closed."""
        reason = f"the demo is busy ({self.max_clients} requests at once): try again in a moment"
        page = f"<!doctype html><meta charset='utf-8'><title>graphcap demo</title>{error_line(reason)}\n".encode()
        head = (f"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/html; charset=utf-8\r\n"
                f"Content-Length: {len(page)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n").encode()
        try:
            request.setblocking(False)
            request.send(head + page)
            request.shutdown(socket.SHUT_WR)
            request.recv(FORM_SLACK)
        except OSError:  # nothing sent yet, or the client gone: either way, done
            pass
        self.shutdown_request(request)
        log.warning("%s:%s 503 (%s)", *client_address[:2], reason)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A bug of ours while serving: its traceback to the log (socketserver prints it on stderr)."""
        log.exception("serving %s:%s failed", *client_address[:2])


def listen(host: str, port: int, max_clients: int = MAX_CLIENTS) -> DemoServer:
    """The server bound to ``host``:``port``, its demo still to set; an OSError of one line naming both."""
    try:
        return DemoServer(None, host, port, max_clients)
    except OSError as err:
        why = ("the port is in use (by another server? --port 0 takes any free one)" if err.errno == errno.EADDRINUSE
               else err.strerror or str(err))
        raise OSError(f"cannot listen on {host}:{port}: {why}") from err


def stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def port(text: str) -> int:
    """--port's type: 1..65535, or 0 for any free port; anything else is argparse's error."""
    if not re.fullmatch(r"[0-9]{1,5}", text) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1..65535, or 0 for any free one)")
    return int(text)


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", type=Path, default=CAPTIONER, help="a trained model folder")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="the parameters naming the extractors' weights (and decoding, report.image_px)")
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=port, default=8000, help="the port (0: any free one)")
    parser.add_argument("--max-bytes", type=int, default=MAX_BYTES, help="the largest upload accepted")
    parser.add_argument("--upload-seconds", type=float, default=UPLOAD_SECONDS,
                        help="the time a request has to arrive whole (else 408)")
    parser.add_argument("--max-clients", type=int, default=MAX_CLIENTS,
                        help="the requests served at once (one more gets 503 at once)")
    parser.add_argument("--verbose", action="store_true", help="the extractors' logs and progress bars on stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = arguments().parse_args(argv)
    return run_command("graphcap-demo", lambda: serve(args))  # a user error: one line naming it, exit 2


def serve(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as opened:
        params = start(args.params)
        server = opened.enter_context(listen(args.host, args.port, args.max_clients))  # a busy port said at once
        if not args.verbose:
            quiet()
            log.setLevel(logging.INFO)  # the requests, still
        images = opened.enter_context(NewImages(args.model, params, device_of(params.store.device)))
        server.demo = Demo(images, params, args.max_bytes, demo_world_note(args.model), args.upload_seconds)
        print(f"graphcap-demo: serving {server.url} (Ctrl-C stops)", flush=True)
        signal.signal(signal.SIGTERM, stop)  # a service manager's stop ends it as Ctrl-C does
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0

if __name__ == "__main__":
    sys.exit(main())
