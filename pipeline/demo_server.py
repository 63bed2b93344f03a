"""The demo's HTTP side, on the standard library's ThreadingHTTPServer: the form's upload parsed,
and what a client can hold bounded. A request must arrive whole within ``upload_seconds`` (else
408), at most ``max_clients`` are served at once (one more gets 503 at once), a body is read in
chunks and a declared length over the limit is refused before its body is read (413). A client
that goes away is one line in the log, and every logged line has its control characters escaped.
What a page shows is the demo's (:class:`pipeline.demo.Demo`: ``page``, ``describe``)."""
from __future__ import annotations

import errno
import html
import io
import itertools
import logging
import math
import re
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from pipeline.app import printable

log = logging.getLogger(__name__)


class Demo(Protocol):
    """What the server asks of the demo it serves (:class:`pipeline.demo.Demo`)."""

    max_bytes: int
    upload_seconds: float

    def page(self, body: str = "") -> str: ...

    def describe(self, name: str, data: bytes) -> str: ...

MAX_BYTES = 20 * 2**20  # an upload larger than this is refused (a 24 MP JPEG is ~10 MB)
FORM_SLACK = 64 * 2**10  # the multipart wrapping around the file, allowed on top of the limit
FILENAME = re.compile(rb'filename="([^"\r\n]*)"')  # a multipart part's file name, in its header
UPLOAD_SECONDS = 30.0  # a request (its line, headers and body) must arrive whole within this
MAX_CLIENTS = 8  # connections served at once; one more is answered 503 at once
CHUNK = 2**16  # a body is read in pieces of at most this size, never all at once
GRACE = 0.5  # seconds a refused upload waits for its first bytes, to name its file


class BadUpload(ValueError):
    """An upload that cannot be captioned: the HTTP status and the one line that says why."""

    def __init__(self, status: HTTPStatus, reason: str):
        super().__init__(reason)
        self.status = status


class Overdue(Exception):
    """A request that did not arrive within its time (not a TimeoutError: http.server would swallow it)."""


class ClientGone(ConnectionError):
    """The client closed its connection before its request had arrived."""


def too_large(name: str, size: int, limit: int) -> str:
    return f"{name}: too large ({size:,} bytes; the limit is {limit:,})"


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
