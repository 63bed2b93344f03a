"""What every entry point shares (the stages, graphcap-verify, graphcap-caption): parameters,
the manifest, JSON output, and user errors as one line instead of a traceback."""
from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable

from features.errors import ImageError, StoreError
from pipeline import runtime
from pipeline.datasets import read_manifest
from pipeline.params import Params, load_params
from pipeline.paths import MANIFEST
from pipeline.weights import localise

log = logging.getLogger(__name__)

# errors in what the user gave (a key, a file, an entry); each message names it
USER_ERRORS = (ValueError, OSError, StoreError, ImageError)  # ParamsError and DatasetError are ValueErrors


def run_main(main: Callable[[], None]) -> None:
    """A stage's entry point: a user error ends it with one line, naming what is wrong, and exit
    code 1 instead of a traceback (GRAPHCAP_TRACEBACK=1 shows the traceback)."""
    try:
        main()
    except USER_ERRORS as err:
        if os.environ.get("GRAPHCAP_TRACEBACK"):
            raise
        sys.exit(f"stage {Path(sys.argv[0]).stem}: {type(err).__name__}: {err}")  # argv[0]: the stage's file


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


def load_manifest(path: Path = MANIFEST, keep: Callable[[dict], dict] | None = None) -> dict[str, Any]:
    """The manifest that ``prepare`` wrote; ``keep`` slims each image entry as it is read."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no manifest (run the prepare stage)")
    try:
        return read_manifest(path, keep)
    except (json.JSONDecodeError, KeyError) as err:
        raise ValueError(f"{path}: not a manifest ({err!r}); run the prepare stage again") from err


def write_json(path: Path, data: Any) -> None:
    """Atomic, strict JSON write: a NaN (a figure with nothing to measure, e.g. the accuracy of
    relations when no caption states one) is written as null, which every JSON reader accepts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_nan_to_null(data), indent=2, allow_nan=False) + "\n")
    tmp.replace(path)


def _nan_to_null(data: Any) -> Any:
    if isinstance(data, float) and math.isnan(data):
        return None
    if isinstance(data, dict):
        return {k: _nan_to_null(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_nan_to_null(v) for v in data]
    return data
