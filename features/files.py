"""Files written whole or not at all: a reader never sees half of one."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


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
