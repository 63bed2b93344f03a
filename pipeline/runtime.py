"""Process set-up shared by the stage entry points: logging, device, offline hubs."""
from __future__ import annotations

import logging
import os

import torch


def setup(hub_wanted: bool = False) -> None:
    """Logging to stderr; Hugging Face hubs offline unless a hub model was asked for, so that a
    missing local file fails at once instead of after ~47 s of retries."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not hub_wanted:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def device_of(spec: str) -> torch.device:
    """``auto`` is the GPU of this process's LOCAL_RANK (one process per GPU) when there is one."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        return torch.device("cpu")
    return torch.device(spec)


def is_local(spec: str) -> bool:
    """A weights spec that names a local file or folder (as opposed to a hub name or tag)."""
    return not spec or os.path.exists(spec)
