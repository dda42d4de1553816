"""Device choice, seeding, mixed precision and version stamps shared by training and inference."""

from __future__ import annotations

import contextlib
import platform
import random

import numpy as np
import torch

from . import __version__
from .errors import InputError, ResourceError


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``; a clear error when the GPU is absent."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ResourceError(f"Device '{name}' was asked for, but this machine has no usable CUDA GPU "
                                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}).",
                                "Use device 'auto' or 'cpu', or install a CUDA build of torch.")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ResourceError(f"Device '{name}' does not exist: {torch.cuda.device_count()} GPU(s) found.",
                                f"Use cuda:0 ... cuda:{torch.cuda.device_count() - 1}, 'auto' or 'cpu'.")
        return device
    raise InputError(f"device '{name}' is not understood.", "Use 'auto', 'cpu', 'cuda' or 'cuda:N'.")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on CUDA when asked (no loss scaling needed); a no-op on the CPU."""
    if enabled and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def needs_grad_scaler(device: torch.device, amp: bool) -> bool:
    return amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()


def versions() -> dict:
    import monai
    return {"asymseg": __version__, "torch": torch.__version__, "monai": monai.__version__,
            "numpy": np.__version__, "python": platform.python_version()}
