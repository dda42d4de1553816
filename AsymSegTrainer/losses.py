"""Asymmetric large-margin and focal losses (cross-entropy and Dice), and the paper's baselines.

Z. Li, K. Kamnitsas, B. Glocker, "Analyzing Overfitting under Class Imbalance in Neural
Networks for Image Segmentation", IEEE TMI 2020, doi:10.1109/TMI.2020.3046692.
Conventions follow the paper's official code as recorded in the project's METHOD.md §3:

- margin (eq. 5/7): ``q = softmax(z - m * r * Y)``, subtracted from the TRUE class only;
- focal factor (eq. 10/11): ``f_j = r_j + (1 - r_j) * (1 - q_j + 1e-6) ** gamma`` from the
  post-margin ``q``, not detached, so rare classes keep CE's gradient and well-represented
  classes are attenuated;
- CE: ``-sum_{voxels, j} f_j * Y_j * log(q_j + 1e-6) / V``, V = every voxel of the batch;
- Dice per sample and per foreground class, smoothing 1e-5, focal weight on the
  false-negative term only: ``(fp + ffn + s) / (2 tp + fp + fn + s)``.

Symmetric baselines use ``r = 1`` for the margin and ``r = 0`` for the focal factor.
Shapes: ``logits`` (N, C, *spatial), any number of spatial dimensions; ``target`` an
integer label map (N, 1, *spatial) / (N, *spatial) or a float one-hot/soft target
(N, C, *spatial) whose all-zero rows are ignored voxels (no CE term, masked out of Dice).
Half-precision logits are computed in float32; float64 stays float64.

MONAI has focal and Dice losses but none with a per-class asymmetric margin/focal factor
or with ignored rows, hence this module.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
from torch import nn

from .targets import (Rarity, check_logits, check_non_negative, compute_dtype, one_hot_target,
                      rarity_vector)

LOG_EPS = 1e-6  # inside the log and the focal base (official code)
DICE_SMOOTH = 1e-5


def _margin_focal(logits: torch.Tensor, target: torch.Tensor, rare: Rarity, margin: float, gamma: float,
                  symmetric: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shared core: validated one-hot ``Y``, post-margin probabilities ``q`` and focal factor ``f``."""
    check_logits(logits)
    margin = check_non_negative(margin, "margin", "the logit margin m subtracted from the true class")
    gamma = check_non_negative(gamma, "gamma", "the focal exponent")
    z = logits.to(compute_dtype(logits))
    r = rarity_vector(rare, z.shape[1], like=z)
    y = one_hot_target(target, z)
    r_margin = torch.ones_like(r) if symmetric else r
    r_focal = torch.zeros_like(r) if symmetric else r
    if margin > 0:
        z = z - margin * r_margin * y
    q = torch.softmax(z, dim=1)
    if gamma > 0:
        f = r_focal + (1 - r_focal) * (1 - q + LOG_EPS) ** gamma
    else:
        f = torch.ones_like(q)
    return y, q, f


def _ce(y: torch.Tensor, q: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    voxels = y.shape[0] * y[0, 0].numel()
    return -(f * y * torch.log(q + LOG_EPS)).sum() / voxels


def _dice(y: torch.Tensor, q: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    valid = (y.sum(dim=1, keepdim=True) > 0).to(q.dtype)  # ignored rows leave Dice entirely
    dims = tuple(range(2, y.dim()))
    q, y, f = q[:, 1:], y[:, 1:], f[:, 1:]  # background excluded
    tp = (q * y).sum(dims)
    fp = (q * (1 - y) * valid).sum(dims)
    fn = ((1 - q) * y).sum(dims)
    ffn = ((1 - q) * y * f).sum(dims)
    return ((fp + ffn + DICE_SMOOTH) / (2 * tp + fp + fn + DICE_SMOOTH)).mean()


def asymmetric_ce(logits: torch.Tensor, target: torch.Tensor, rare: Rarity, margin: float = 0.0,
                  gamma: float = 0.0, symmetric: bool = False) -> torch.Tensor:
    """Cross-entropy with the asymmetric large margin (eq. 7) and asymmetric focal factor (eq. 11).

    Args:
        logits: (N, C, *spatial) raw network outputs.
        target: label map (N, 1, *spatial) / (N, *spatial), or one-hot/soft (N, C, *spatial).
        rare: length-C rarity in [0, 1]; 1 = rare (margin and full CE weight), 0 = attenuated.
        margin: m >= 0, subtracted from the true-class logit times its rarity.
        gamma: focal exponent >= 0 applied to the non-rare part of each class.
        symmetric: the paper's symmetric baselines (margin and focal on every class).

    Returns:
        Scalar: sum over classes, mean over all N * prod(spatial) voxels (ignored ones included).
    """
    return _ce(*_margin_focal(logits, target, rare, margin, gamma, symmetric))


def asymmetric_dice(logits: torch.Tensor, target: torch.Tensor, rare: Rarity, margin: float = 0.0,
                    gamma: float = 0.0, symmetric: bool = False) -> torch.Tensor:
    """Soft Dice loss with asymmetric margin and focal weight on false negatives (eq. 12/13).

    Same arguments as :func:`asymmetric_ce`. Per sample and per foreground class
    ``(fp + ffn + 1e-5) / (2 tp + fp + fn + 1e-5)``, then the mean over samples and classes;
    with m = 0 and gamma = 0 it equals 1 - soft DSC.
    """
    return _dice(*_margin_focal(logits, target, rare, margin, gamma, symmetric))


class AsymmetricLoss(nn.Module):
    """Training objective: ``ce_weight * asymmetric_ce + dice_weight * asymmetric_dice``.

    Both terms share one softmax. ``terms()`` returns each weighted term (for progress
    reports and NaN diagnosis); ``forward()`` returns their sum.

    Args:
        rare: length-C rarity vector in [0, 1].
        margin, gamma, symmetric: as in :func:`asymmetric_ce`.
        ce_weight, dice_weight: >= 0, not both 0 (CE alone: DeepMedic on BRATS; 1:1 for U-Net on KiTS).
    """

    def __init__(self, rare: Sequence[float], margin: float = 0.0, gamma: float = 0.0, symmetric: bool = False,
                 ce_weight: float = 1.0, dice_weight: float = 0.0):
        super().__init__()
        self.rare = [float(v) for v in rare]
        rarity_vector(self.rare, len(self.rare), like=torch.zeros(1, len(self.rare), 1))
        self.margin = check_non_negative(margin, "margin", "the logit margin m")
        self.gamma = check_non_negative(gamma, "gamma", "the focal exponent")
        self.symmetric = bool(symmetric)
        self.ce_weight = check_non_negative(ce_weight, "ce_weight", "weight of the cross-entropy term")
        self.dice_weight = check_non_negative(dice_weight, "dice_weight", "weight of the Dice term")
        if self.ce_weight == 0 and self.dice_weight == 0:
            raise ValueError("ce_weight and dice_weight are both 0; give at least one term a positive weight.")

    def terms(self, logits: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        if logits.shape[1] != len(self.rare):
            raise ValueError(f"logits have {logits.shape[1]} classes but the loss was built with rare of length "
                             f"{len(self.rare)}; build it with one rarity value per class.")
        y, q, f = _margin_focal(logits, target, self.rare, self.margin, self.gamma, self.symmetric)
        out = {}
        if self.ce_weight:
            out["ce"] = self.ce_weight * _ce(y, q, f)
        if self.dice_weight:
            out["dice"] = self.dice_weight * _dice(y, q, f)
        return out

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(self.terms(logits, target).values())

    def extra_repr(self) -> str:
        return (f"rare={self.rare}, margin={self.margin}, gamma={self.gamma}, symmetric={self.symmetric}, "
                f"ce_weight={self.ce_weight}, dice_weight={self.dice_weight}")


class TermLoss(nn.Module):
    """A baseline loss function as a training objective: one named term (``terms()``), its value (``forward()``).

    ``dice_weight`` is 0: the adversarial direction of such a run uses cross-entropy.
    """

    dice_weight = 0.0

    def __init__(self, name: str, function, **options):
        super().__init__()
        self.name, self.function, self.options = name, function, options

    def terms(self, logits: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {self.name: self.function(logits, target, **self.options)}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.function(logits, target, **self.options)

    def extra_repr(self) -> str:
        return f"{self.function.__name__}, {self.options}"


# ---------------------------------------------------------------- baselines (METHOD.md §7)

def soft_fbeta_loss(logits: torch.Tensor, target: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Soft F-beta loss, the paper's re-weighting baseline (beta = 1, 2, 4, 8).

    ``1 - (1 + b^2) tp / ((1 + b^2) tp + b^2 fn + fp + 1e-5)`` per sample and foreground
    class, averaged; beta > 1 weighs recall (false negatives) more. Ignored rows are masked.
    """
    check_logits(logits)
    beta = float(beta)
    if not beta > 0 or beta == float("inf"):
        raise ValueError(f"beta must be a finite number > 0 (the paper uses 1, 2, 4, 8); got {beta}.")
    z = logits.to(compute_dtype(logits))
    y = one_hot_target(target, z)
    q = torch.softmax(z, dim=1)
    valid = (y.sum(dim=1, keepdim=True) > 0).to(q.dtype)
    dims = tuple(range(2, y.dim()))
    q, y = q[:, 1:], y[:, 1:]
    tp = (q * y).sum(dims)
    fp = (q * (1 - y) * valid).sum(dims)
    fn = ((1 - q) * y).sum(dims)
    b2 = beta * beta
    return (1 - (1 + b2) * tp / ((1 + b2) * tp + b2 * fn + fp + DICE_SMOOTH)).mean()


def ldam_rarity(class_counts: Sequence[float]) -> list:
    """LDAM (Cao et al., NeurIPS 2019) as a continuous rarity: ``r_j ∝ n_j^(-1/4)``, max 1.

    Use the result as ``rare`` with a margin ``m`` (the largest class margin): the rarest class
    gets margin m, class j gets ``m * (n_min / n_j)^(1/4)``. Counts must be positive.
    """
    counts = torch.as_tensor(class_counts, dtype=torch.float64).flatten()
    if counts.numel() < 2 or not torch.isfinite(counts).all() or (counts <= 0).any():
        raise ValueError(f"class_counts must hold one positive voxel count per class (at least 2 classes); "
                         f"got {list(class_counts)}.")
    inv = counts ** -0.25
    return (inv / inv.max()).tolist()


def logit_adjusted_ce(logits: torch.Tensor, target: torch.Tensor, class_priors: Sequence[float],
                      tau: float = 1.0) -> torch.Tensor:
    """Logit-adjusted cross-entropy (Menon et al., ICLR 2021): ``CE(z + tau * log prior)``.

    A control that moves the decision threshold globally, to separate the effect of the
    asymmetric margin (which acts only on true-class logits) from a threshold shift.
    ``class_priors``: length C, positive (normalised here).
    """
    check_logits(logits)
    tau = check_non_negative(tau, "tau", "the logit-adjustment temperature")
    z = logits.to(compute_dtype(logits))
    priors = torch.as_tensor(class_priors, dtype=z.dtype, device=z.device).flatten()
    if priors.numel() != z.shape[1] or not torch.isfinite(priors).all() or (priors <= 0).any():
        raise ValueError(f"class_priors must hold {z.shape[1]} positive numbers (class frequencies); "
                         f"got {list(class_priors)}.")
    priors = priors / priors.sum()
    shift = tau * torch.log(priors).view(1, -1, *([1] * (z.dim() - 2)))
    return asymmetric_ce(z + shift, target, [0.0] * z.shape[1])

