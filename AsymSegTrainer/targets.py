"""Argument checks shared by the losses and regularisers: rarity vectors and targets.

A target is either an integer label map, (N, 1, *spatial) or (N, *spatial), or a float
one-hot / soft target (N, C, *spatial) in which an all-zero row marks an ignored voxel
(METHOD.md §2). Everything here raises ``ValueError`` that names the argument and the fix.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

Rarity = Union[Sequence[float], torch.Tensor]


def compute_dtype(logits: torch.Tensor) -> torch.dtype:
    """float64 stays float64; half, bfloat16 and float32 are computed in float32."""
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def check_logits(logits: torch.Tensor, name: str = "logits") -> None:
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor (N, C, *spatial); got {type(logits).__name__}"
                         f"{'' if not isinstance(logits, torch.Tensor) else ' of dtype ' + str(logits.dtype)}.")
    if logits.dim() < 3:
        raise ValueError(f"{name} must have shape (N, C, *spatial) with at least one spatial dimension; "
                         f"got shape {tuple(logits.shape)}. Add a batch and/or channel dimension.")
    if logits.shape[1] < 2:
        raise ValueError(f"{name} has {logits.shape[1]} channel(s); the losses need one logit channel per class "
                         f"(C >= 2, background included).")


def rarity_vector(rare: Rarity, num_classes: int, *, like: torch.Tensor, name: str = "rare") -> torch.Tensor:
    """Validate ``rare`` (length C, values in [0, 1]) and return it as a tensor shaped (1, C, 1, ...)."""
    try:
        r = torch.as_tensor(rare, dtype=like.dtype, device=like.device).flatten()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name} must be a sequence of {num_classes} numbers in [0, 1] "
                         f"(1 = rare class, 0 = well represented); got {rare!r}.") from exc
    if r.numel() != num_classes:
        raise ValueError(f"{name} has {r.numel()} entries but the logits have {num_classes} classes; "
                         f"give one rarity value per class, e.g. [0] + [1] * {num_classes - 1}.")
    if not torch.isfinite(r).all() or (r < 0).any() or (r > 1).any():
        raise ValueError(f"{name} values must lie in [0, 1] (1 = rare, 0 = well represented); got {r.tolist()}.")
    return r.view(1, num_classes, *([1] * (like.dim() - 2)))


def check_non_negative(value: float, name: str, meaning: str) -> float:
    value = float(value)
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0 ({meaning}); got {value}.")
    return value


def one_hot_target(target: torch.Tensor, logits: torch.Tensor, name: str = "target") -> torch.Tensor:
    """Return the target as a float (N, C, *spatial) tensor in the logits' compute dtype.

    Integer label maps are one-hot encoded (values must lie in [0, C)); float targets of
    the logits' shape are used as they are (soft labels; an all-zero row = ignored voxel).
    """
    if not isinstance(target, torch.Tensor):
        raise ValueError(f"{name} must be a tensor; got {type(target).__name__}.")
    n, c, spatial = logits.shape[0], logits.shape[1], tuple(logits.shape[2:])
    dtype = compute_dtype(logits)
    if target.is_floating_point() and tuple(target.shape) == (n, c) + spatial:
        if ((target < 0) | (target > 1)).any():
            raise ValueError(f"{name} is a one-hot/soft target (N, C, *spatial) and must hold values in [0, 1].")
        return target.to(device=logits.device, dtype=dtype)
    if target.dim() == logits.dim() and target.shape[1] == 1:
        labels = target[:, 0]
    elif target.dim() == logits.dim() - 1:
        labels = target
    else:
        raise ValueError(f"{name} has shape {tuple(target.shape)}, which fits neither a label map "
                         f"(N, 1, *spatial) / (N, *spatial) nor a one-hot target (N, C, *spatial) for logits "
                         f"of shape {tuple(logits.shape)}.")
    if tuple(labels.shape) != (n,) + spatial:
        raise ValueError(f"{name} label map has shape {tuple(target.shape)} but the logits have batch size {n} and "
                         f"spatial size {spatial}; they must match voxel for voxel.")
    if labels.is_floating_point():
        if not torch.equal(labels, labels.round()):
            raise ValueError(f"{name} is a float tensor with a single channel but holds non-integer values; pass an "
                             f"integer label map or a one-hot/soft target of shape (N, C, *spatial).")
    labels = labels.long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= c):
        bad = torch.unique(labels[(labels < 0) | (labels >= c)]).tolist()
        raise ValueError(f"{name} holds label values {bad[:10]} outside [0, {c - 1}] for {c} classes; map the "
                         f"labels to class indices 0..{c - 1} first.")
    one_hot = torch.zeros((n, c) + spatial, dtype=dtype, device=logits.device)
    return one_hot.scatter_(1, labels.to(logits.device).unsqueeze(1), 1.0)
