"""A local web page where one drops an image and sees what the captioner makes of it: the
caption of each decoding and the report's drawing (boxes, region graph, keywords with the gate).

    graphcap-demo [--model models/captioner] [--port 8000]   (then open the URL it prints)

A page of our own on the standard library's ThreadingHTTPServer rather than Gradio: one form and
one result need no framework, so the demo adds no dependency, starts at once and is tested with
urllib. An upload goes the way `graphcap-caption` takes a file (pipeline/caption.py: the
extractors of pipeline/extract.py into a scratch store, then the model), loaded once at start; a
bad upload (empty, over the size limit, not an image) gets a 4xx page of one line naming the
file and the reason, and the server keeps serving. The HTTP side, with its bounds on what a
client can hold, is pipeline/demo_server.py.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import html
import io
import logging
import re
import signal
import sys
import tempfile
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

from eval.report import CHECK, LEGEND, STYLE, draw, report_items, section
from pipeline.app import project_of, run_command, start
from pipeline.caption import NewImages, demo_world_note, own_params, quiet
from pipeline import demo_server
from pipeline.demo_server import MAX_BYTES, MAX_CLIENTS, UPLOAD_SECONDS, BadUpload, listen, too_large
from pipeline.params import Params
from pipeline.paths import CAPTIONER
from pipeline.runtime import device_of
from train.model import model_folder



# Dropping a file on the zone submits it; choosing one with the button waits for "Caption".
SCRIPT = """<script>const f=document.getElementById('upload'),z=document.getElementById('drop');
['dragenter','dragover'].forEach(e=>z.addEventListener(e,v=>{v.preventDefault();z.classList.add('over');}));
z.addEventListener('dragleave',()=>z.classList.remove('over'));
z.addEventListener('drop',v=>{v.preventDefault();f.image.files=v.dataTransfer.files;f.submit();});</script>"""
FORM_STYLE = """#drop{display:block;padding:2em;border:2px dashed #999;background:#fff;margin-bottom:1em}
#drop.over{background:#eef}#error{color:#a00;font-weight:bold}.note{color:#666}"""


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


def safe_name(name: str) -> str:
    """A file name from an upload's, safe to write: no folders, no characters a shell would mind."""
    cleaned = re.sub(r"[^\w.\- ]", "_", Path(name.replace("\\", "/")).name).strip(" .")
    return cleaned[:120] or "upload"


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
    parser.add_argument("--model", help=f"a model folder or Hub id (default: {CAPTIONER} beside --params)")
    parser.add_argument("--params", type=Path,
                        help="the parameters naming the extractors' weights (and decoding, report.image_px); their "
                             "relative paths are read from this file's folder (default: the model folder's own "
                             "params.yaml, as a release holds, else ./params.yaml)")
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
    local = Path(args.model).resolve() if args.model and Path(args.model).is_dir() else None  # where the user is
    params_file = args.params or own_params(local) or Path("params.yaml")
    with contextlib.ExitStack() as opened:
        opened.enter_context(contextlib.chdir(project_of(params_file)))  # the parameters' paths: their project's
        params = start(params_file.resolve())
        server = opened.enter_context(listen(args.host, args.port, args.max_clients))  # a busy port said at once
        model = local or (model_folder(args.model).resolve() if args.model else CAPTIONER.resolve())  # a Hub id
        if not args.verbose:
            quiet()
            demo_server.log.setLevel(logging.INFO)  # the requests, still
        images = opened.enter_context(NewImages(model, params, device_of(params.store.device)))
        server.demo = Demo(images, params, args.max_bytes, demo_world_note(model), args.upload_seconds)
        print(f"graphcap-demo: serving {server.url} (Ctrl-C stops)", flush=True)
        signal.signal(signal.SIGTERM, stop)  # a service manager's stop ends it as Ctrl-C does
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0

if __name__ == "__main__":
    sys.exit(main())
