"""What every entry point shares (the stages, graphcap-verify, graphcap-caption): parameters,
the manifest, JSON output, and user errors as one line instead of a traceback."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from corpus.datasets import read_manifest
from features.errors import ImageError, StoreError
from pipeline import runtime
from pipeline.params import Params, load_params
from pipeline.paths import MANIFEST
from pipeline.weights import localise

log = logging.getLogger(__name__)

# errors in what the user gave (a key, a file, an entry); each message names it
USER_ERRORS = (ValueError, OSError, StoreError, ImageError)  # ParamsError and DatasetError are ValueErrors
USER_ERROR_EXIT = 2  # every command's exit code when what the user gave is wrong (docs/pipeline.md)


def printable(text: str) -> str:
    """``text`` fit for a log line: each control character (a line break, a terminal's escape
    sequence, a bell) written as its escape, ``\\x1b``, so that no input can forge or garble lines."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def one_line(err: BaseException) -> str:
    """An error as one line: its type and message, whitespace (a YAML parser's multi-line report,
    for one) folded, control characters escaped."""
    return f"{type(err).__name__}: {printable(' '.join(str(err).split()))}"


def run_command(name: str, main: Callable[[], int | None]) -> int:
    """The one error boundary of every command (stages, graphcap-verify, -caption, -demo): a user
    error ends it with one line on stderr, ``<name>: <Error>: <what, naming the file, key or
    entry>``, and exit code :data:`USER_ERROR_EXIT` instead of a traceback (GRAPHCAP_TRACEBACK=1
    shows the traceback). Returns main's exit code otherwise."""
    try:
        return main() or 0
    except USER_ERRORS as err:
        if os.environ.get("GRAPHCAP_TRACEBACK"):
            raise
        print(f"{name}: {one_line(err)}", file=sys.stderr)
        return USER_ERROR_EXIT


_ON_STOP: list[Callable[[], object]] = []  # what a stopped command does first (remove_on_stop, on_stop)


def remove_on_stop(folder: Path) -> None:
    _ON_STOP.append(lambda: shutil.rmtree(folder, ignore_errors=True))


@contextlib.contextmanager
def on_stop(action: Callable[[], object]) -> Iterator[None]:
    """While inside, a stop by signal (see :func:`stopping_on_signals`) runs ``action`` first
    (e.g. cancelling the cluster jobs this command submitted)."""
    _ON_STOP.append(action)
    try:
        yield
    finally:
        _ON_STOP.remove(action)


@contextlib.contextmanager
def stopping_on_signals() -> Iterator[None]:
    """While inside, SIGTERM and Ctrl-C end the command at once with exit code 128 + the signal,
    after the actions of :func:`remove_on_stop` and :func:`on_stop`; the previous handlers are back
    afterwards (a caller's process, a test run's, keeps its own). Not by raising in the main
    thread: an exception raised inside a library's loader can come out as another error
    (measured: torch turned one into a ValueError), which would read as a user error. A process
    forked meanwhile (a loader worker) dies of the signal as by default."""
    owner = os.getpid()

    def stop(signum: int, frame: object) -> None:
        if os.getpid() == owner:
            for action in _ON_STOP:
                action()
        os._exit(128 + signum)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def exit_with_parent(poll_seconds: float = 1.0) -> None:
    """End this process (SIGTERM) once its parent is gone: a stage whose `dvc repro` was killed
    must not train on as an orphan. A daemon thread polls the parent's pid (a signal on the
    parent's death, prctl's PDEATHSIG, fires when the parent's *thread* ends, which DVC's may)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        log.warning("the parent process %d is gone: stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def run_main(main: Callable[[], None]) -> None:
    """A stage's entry point, through :func:`run_command` (argv[0]: the stage's file); it ends
    with its parent (:func:`exit_with_parent`)."""
    exit_with_parent()
    sys.exit(run_command(f"stage {Path(sys.argv[0]).stem}", main))


def start(params_file: Path = Path("params.yaml"), localised: bool = True) -> Params:
    """Parse params.yaml (fails on any bad key before work starts) and set up the process; the
    pretrained inputs are read from the weights stage's copies (``localised``), and the model hubs
    stay offline unless a weight is still named by a hub tag rather than a local path."""
    params = load_params(params_file)
    if localised:
        params = localise(params)
    specs = (params.clip.pretrained, params.model.gpt2)
    runtime.setup(hub_wanted=not all(runtime.is_local(s) for s in specs))
    return params


def project_of(params_file: Path) -> Path:
    """The folder a params file's relative paths (assets/, weights/, data/) are rooted in: its own.
    Commands that may run from elsewhere (graphcap-caption, graphcap-demo) work from there."""
    if not params_file.is_file():
        raise FileNotFoundError(f"{params_file}: no such params file (--params names the project's params.yaml)")
    return params_file.resolve().parent


def load_manifest(path: Path = MANIFEST, keep: Callable[[dict], dict] | None = None) -> dict[str, Any]:
    """The manifest that ``prepare`` wrote; ``keep`` slims each image entry as it is read."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no manifest (run the prepare stage)")
    try:
        return read_manifest(path, keep)
    except (json.JSONDecodeError, KeyError) as err:
        raise ValueError(f"{path}: not a manifest ({err!r}); run the prepare stage again") from err
