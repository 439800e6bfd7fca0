"""Where training and evaluation run: the ``train.device`` / ``train.precision`` settings made concrete.

``auto`` is CUDA when torch sees a CUDA device, else the CPU; ``cuda`` / ``cuda:N`` without CUDA is
an error naming the setting (never a silent CPU fallback). On CUDA, TF32 is allowed for fp32
matmuls and convolutions and ``torch.backends.cudnn.benchmark`` is on (fixed input sizes);
``bf16`` autocasts the forward pass and the loss.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

__all__ = ["autocast", "configure_backends", "resolve_device"]


def resolve_device(spec: str | torch.device = "auto", key: str = "train.device") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a :class:`torch.device`.

    Raises:
        ValueError: an unknown spec, CUDA asked for but not available, or ``cuda:N`` with N at or above
            the device count (the message names ``key`` and the value).
    """
    s = str(spec)
    if s == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if s == "cpu":
        return torch.device("cpu")
    if s == "cuda" or (s.startswith("cuda:") and s[5:].isdigit()):
        if not torch.cuda.is_available():
            build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a build without CUDA")
            raise ValueError(f"{key}={s}: CUDA is not available here ({build}); use {key}=cpu or {key}=auto")
        dev = torch.device(s)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{key}={s}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return dev
    raise ValueError(f"{key}={s!r}; allowed: auto, cpu, cuda, cuda:N")


def configure_backends(device: torch.device) -> None:
    """On CUDA: TF32 for fp32 matmuls and convolutions, cuDNN autotuning (``cudnn.benchmark``). No-op on CPU."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def autocast(device: torch.device, precision: str) -> ContextManager:
    """The forward-pass context for ``precision``: ``bf16`` -> ``torch.autocast(device.type, torch.bfloat16)``,
    ``fp32`` -> a no-op.

    Raises:
        ValueError: an unknown precision.
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise ValueError(f"train.precision={precision!r}; allowed: fp32, bf16")
