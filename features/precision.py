"""The numeric precision the frozen extractors run at (``store.precision``).

``fp32`` runs every layer in float32. ``bf16`` and ``fp16`` run the networks' heavy layers under
``torch.autocast`` (matrix products and convolutions in the low precision, reductions and norms
in float32, as autocast's op lists decide), on tensor cores on a GPU; bf16 also on a CPU (native
with AVX512-BF16 or AMX, emulated — and slower than fp32 — without), fp16 on CUDA only. Whatever
reads a network's output for a decision — box decoding, NMS, scores, the store's float16 rows —
gets float32: :class:`Autocast` casts each output back. The precision is part of every image
and text feature's provenance, so features of two precisions are never mixed.
"""
from __future__ import annotations

import contextlib
from typing import Any, Literal, get_args

import torch
from torch import nn

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device | str, key: str = "store.precision") -> None:
    """Refuse, naming the setting ``key``, a precision this device cannot run."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"{key}: unknown {precision!r} ({' | '.join(PRECISIONS)})")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"{key}: fp16 runs on CUDA only, not on {device.type}; use bf16 or fp32")


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 natively: any CUDA device this code targets, or a CPU
    with AVX512-BF16 or AMX. Elsewhere PyTorch emulates it (measured on an AVX2 CPU: a matmul
    ~7x, an R50-FPN convolution ~400x slower than in fp32)."""
    return torch.device(device).type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported()


def autocast(precision: str, device: torch.device | str, key: str = "store.precision") -> contextlib.AbstractContextManager:
    """The context a network runs in at ``precision`` on ``device`` (fp32: no autocast)."""
    check_precision(precision, device, key)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=DTYPES[precision])


def to_float(value: Any) -> Any:
    """``value`` with every floating tensor in it (also inside dicts, lists and tuples) as float32."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return type(value)((k, to_float(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(to_float(v) for v in value)
    return value


class Autocast(nn.Module):
    """``module`` run under autocast at ``precision``, its outputs returned as float32: what reads
    them keeps full precision. Wrap a loaded model's parts with :func:`run_parts_at`."""

    def __init__(self, module: nn.Module, precision: str, device: torch.device | str):
        super().__init__()
        check_precision(precision, device)
        self.module, self.precision, self.device_type = module, precision, torch.device(device).type

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with autocast(self.precision, self.device_type):
            return to_float(self.module(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        """The wrapped module's attributes (e.g. a backbone's ``size_divisibility``) read through."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("module"), name)


def run_parts_at(model: nn.Module, parts: list[str], precision: str, device: torch.device | str) -> nn.Module:
    """``model`` with each named submodule (dotted path) wrapped in :class:`Autocast` (fp32: as
    it is). Call it after the weights are loaded: the wrappers change the state_dict's keys."""
    check_precision(precision, device)
    if precision == "fp32":
        return model
    for path in parts:
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, name, Autocast(getattr(parent, name), precision, device))
    return model
