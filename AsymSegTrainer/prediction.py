"""Whole-volume logits by MONAI sliding-window inference (Gaussian blending), 2D or 3D."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from .runtime import autocast


@torch.no_grad()
def predict_logits(model: nn.Module, image: np.ndarray, patch_size: Sequence[int], device: torch.device,
                   spatial_dims: int = 3, overlap: float = 0.5, amp: bool = False, sw_batch_size: int = 4) -> torch.Tensor:
    """Logits (C_out, z, y, x) float32 on the CPU for one image (C_in, z, y, x).

    With ``spatial_dims == 2`` the volume is a single slice (z = 1) and the network is 2D.
    The model is put in eval mode and left there (callers switch back to train).
    """
    model.eval()
    x = torch.from_numpy(np.ascontiguousarray(image)).unsqueeze(0).to(device)
    roi = tuple(int(p) for p in patch_size)
    if spatial_dims == 2:
        x, roi = x[:, :, 0], roi[-2:]
    if device.type == "cuda" and x.dim() == 5:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    with autocast(device, amp):
        logits = sliding_window_inference(x, roi, sw_batch_size, model, overlap=overlap, mode="gaussian")
    logits = logits[0].float().cpu()
    return logits.unsqueeze(1) if spatial_dims == 2 else logits
