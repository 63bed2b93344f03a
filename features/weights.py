"""Local weight files: safe loading and identity hashes for provenance."""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import torch
from safetensors.torch import load_file


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a state_dict from ``.safetensors`` or a torch file, never unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # torchvision/detectron2-style checkpoints wrap the state_dict
    return state


@lru_cache(maxsize=64)
def _sha256(path: Path, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_identity(spec: str) -> str:
    """``sha256:<hex>`` of a local file or folder (files hashed in name order), else the tag
    itself (an open_clip pretrained tag such as ``openai``)."""
    path = Path(spec)
    if path.is_file():
        stat = path.stat()
        return "sha256:" + _sha256(path, stat.st_mtime_ns, stat.st_size)
    if path.is_dir():
        parts = [f"{p.relative_to(path)}={weights_identity(str(p))}" for p in sorted(path.rglob("*")) if p.is_file()]
        return "sha256:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()
    return spec
