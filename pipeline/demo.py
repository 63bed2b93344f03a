"""A web demo where one drops an image and sees what the captioner makes of it: the caption of
each decoding, and the report's drawing (boxes, region graph) with the keywords and the gate.

    graphcap-demo [--model models/captioner] [--port 7860]   (then open the URL it prints)

A Gradio app (``pip install -e '.[demo]'``), as the field's captioning demos are: the model sits
behind a queue (one upload captioned at a time), its API is ``/caption`` for ``gradio_client``,
analytics are off and the theme's fonts are Gradio's own files, so nothing is fetched from the
network. An upload goes the way `graphcap-caption` takes a file (pipeline/caption.py: the
extractors into a scratch store, then the model), loaded once at start. A bad upload (empty, over
the size limit, not an image) gets one line naming the file and the reason, and the app keeps
serving. A release folder's ``app.py`` (pipeline/stages/release.py) runs this as a Hugging Face
Space.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from PIL import Image

from eval.report import LEGEND, details, draw, report_items
from pipeline.app import printable, project_of, run_command, start
from pipeline.caption import NewImages, demo_world_note, own_params, quiet
from pipeline.params import Params
from pipeline.paths import CAPTIONER
from pipeline.runtime import device_of
from train.model import model_folder

if TYPE_CHECKING:
    import gradio as gr

log = logging.getLogger(__name__)

MAX_BYTES = 20 * 2**20  # an upload larger than this is refused (a 24 MP JPEG is ~10 MB)
MAX_QUEUE = 16  # uploads waiting for the model; one more is told the queue is full
API_NAME = "caption"  # gradio_client: Client(url).predict(handle_file(path), api_name="/caption")


def _gradio() -> ModuleType:
    """Gradio, imported when the app is built (seconds: `--help` does not wait for it), its
    analytics off before the import (no version check either)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ModuleNotFoundError as err:  # an optional extra: one line, not a traceback
        raise SystemExit(f"graphcap-demo: {err.name} is not installed: pip install -e '.[demo]'") from None
    return gradio


class BadUpload(ValueError):
    """An upload that cannot be captioned, and the one line that says why."""


def too_large(name: str, size: int, limit: int) -> str:
    return f"{name}: too large ({size:,} bytes; the limit is {limit:,})"


def refusal(reason: str) -> gr.Error:
    """What the page shows (until closed) and the log's one line: no traceback for a user's file."""
    log.warning("refused: %s", printable(reason))
    return _gradio().Error(reason, duration=None, print_exception=False)


@dataclass
class Demo:
    """What the app holds between uploads: the loaded model and extractors, and the limit."""

    images: NewImages
    params: Params
    max_bytes: int = MAX_BYTES
    note: str | None = None  # said on the page (a model of the demo world, for one)

    def describe(self, upload: str | None) -> tuple[Image.Image, dict[str, str], str]:
        """One uploaded file (the path Gradio saved it at, under its own name): its drawing, its
        caption by each decoding, and the details block. A bad file raises BadUpload."""
        if not upload:
            raise BadUpload("no file chosen")
        path = Path(upload)
        size = path.stat().st_size
        if not size:
            raise BadUpload(f"{path.name}: empty file")
        if size > self.max_bytes:
            raise BadUpload(too_large(path.name, size, self.max_bytes))
        with self.images.features([path]) as (features, good, errors):
            if errors:  # the pipeline's own reason, naming the file as the user knows it
                reason = " ".join(errors[0].replace(str(path), path.name).split())
                raise BadUpload(reason if path.name in reason else f"{path.name}: {reason}")
            item, = report_items(self.images.model, self.images.config, features, good, [path], [path.name],
                                 self.params.evaluate.decode, self.params.report.top_keywords,
                                 self.images.device, self.images.rerank)
        return draw(item, self.params.report.image_px), item.captions, details(item)

    def caption(self, upload: str | None) -> tuple[Image.Image, dict[str, str], str]:
        """:meth:`describe` behind the app: the user gets one line, a bug's traceback goes to the log."""
        try:
            return self.describe(upload)
        except BadUpload as err:
            raise refusal(str(err)) from None
        except Exception:
            name = Path(upload).name if upload else "the upload"
            log.exception("captioning %s failed", printable(name))
            raise refusal(f"{name}: could not be captioned (an internal error; the server's log has it)") from None

    def app(self) -> gr.Blocks:
        gr = _gradio()
        with gr.Blocks(title="graphcap demo", analytics_enabled=False) as blocks:
            gr.Markdown("# graphcap demo" + (f"\n\n**Note:** {self.note}" if self.note else ""))
            with gr.Row():
                upload = gr.File(label=f"An image (at most {self.max_bytes:,} bytes)", type="filepath",
                                 elem_id="upload")
                drawing = gr.Image(label="Regions, graph and keywords", type="pil", format="png",
                                   interactive=False, elem_id="drawing")
            captions = gr.JSON(label="Caption by decoding", elem_id="captions")
            explained = gr.HTML(elem_id="details")
            gr.Markdown(LEGEND)
            upload.upload(self.caption, upload, [drawing, captions, explained], api_name=API_NAME)
        return blocks.queue(default_concurrency_limit=1, max_size=MAX_QUEUE)


def launch(demo: Demo, host: str | None, port: int | None) -> tuple[gr.Blocks, str]:
    """The app served from a thread (host and port: Gradio's, from GRADIO_SERVER_NAME/PORT on a
    Space, if not given): the app and its URL."""
    blocks = demo.app()
    _, url, _ = blocks.launch(server_name=host, server_port=port, max_file_size=demo.max_bytes, quiet=True,
                              prevent_thread_lock=True, footer_links=["api"], ssr_mode=False)
    return blocks, url


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", help=f"a model folder or Hub id (default: {CAPTIONER} beside --params)")
    parser.add_argument("--params", type=Path,
                        help="the parameters naming the extractors' weights (and decoding, report.image_px); their "
                             "relative paths are read from this file's folder (default: the model folder's own "
                             "params.yaml, as a release holds, else ./params.yaml)")
    parser.add_argument("--host", help="the address to listen on (default: Gradio's, 127.0.0.1; 0.0.0.0: every "
                                       "interface)")
    parser.add_argument("--port", type=int, help="the port (default: Gradio's, 7860)")
    parser.add_argument("--max-bytes", type=int, default=MAX_BYTES, help="the largest upload accepted")
    parser.add_argument("--verbose", action="store_true", help="the extractors' logs and progress bars on stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = arguments().parse_args(argv)
    return run_command("graphcap-demo", lambda: serve(args))  # a user error: one line naming it, exit 2


def stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serve(args: argparse.Namespace) -> int:
    local = Path(args.model).resolve() if args.model and Path(args.model).is_dir() else None  # where the user is
    params_file = args.params or own_params(local) or Path("params.yaml")
    with contextlib.ExitStack() as opened:
        opened.enter_context(contextlib.chdir(project_of(params_file)))  # the parameters' paths: their project's
        params = start(params_file.resolve())
        model = local or (model_folder(args.model).resolve() if args.model else CAPTIONER.resolve())  # a Hub id
        if not args.verbose:
            quiet()
        images = opened.enter_context(NewImages(model, params, device_of(params.store.device)))
        blocks, url = launch(Demo(images, params, args.max_bytes, demo_world_note(model)), args.host, args.port)
        opened.callback(blocks.close)
        print(f"graphcap-demo: serving {url} (Ctrl-C stops)", flush=True)
        signal.signal(signal.SIGTERM, stop)  # a service manager's stop ends it as Ctrl-C does
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()  # until Ctrl-C or SIGTERM
    return 0


if __name__ == "__main__":
    sys.exit(main())
