"""Asymmetric regularisers: adversarial training, mixup and augmentation that favour the rare classes.

Z. Li, K. Kamnitsas, B. Glocker, "Analyzing Overfitting under Class Imbalance in Neural
Networks for Image Segmentation", IEEE TMI 2020, doi:10.1109/TMI.2020.3046692.
These change the training batch, not the loss formula (METHOD.md §4):

- asymmetric adversarial training (eq. 14-16): :func:`adversarial_perturbation` finds, with
  one VAT-style power iteration, the input perturbation that most increases the loss of the
  rare-class voxels only; the engine then adds a training term on ``(x + r_adv, Y)``;
- asymmetric mixup (eq. 17-19): :func:`sample_mixup_lambda`, :func:`mixup_batch` and
  :func:`mixup_targets` mix pairs of patches and keep a rare label only where its patch
  dominates the mix by more than a margin; everything else that disagrees is ignored;
- asymmetric augmentation (eq. 21): :func:`augmentation_probability` and
  :func:`choose_patches_to_augment` augment patches centred on rare classes with
  probability ``p_fg`` (usually 1) and the others with a smaller ``p_bg``.

Targets follow the losses' convention (:mod:`AsymSegTrainer.losses`): a float
(N, C, *spatial) tensor whose all-zero rows are ignored voxels. Everything here raises
``ValueError`` naming the argument and the fix.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from .losses import asymmetric_ce, asymmetric_dice
from .targets import Rarity, check_non_negative, compute_dtype, one_hot_target, rarity_vector

BoolArray = Union[bool, np.ndarray]


def _unit_interval(value: float, name: str, meaning: str) -> float:
    """``float(value)``, checked to lie in [0, 1]."""
    try:
        value = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a number in [0, 1] ({meaning}); got {value!r}.") from exc
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1] ({meaning}); got {value}.")
    return value


def _num_classes(rare: Rarity) -> int:
    try:
        num_classes = len(rare)
    except TypeError as exc:
        raise ValueError(f"rare must be a sequence with one rarity value in [0, 1] per class; got {rare!r}.") from exc
    if num_classes < 2:
        raise ValueError(f"rare has {num_classes} entries; give one value per class, background included "
                         f"(at least 2 classes), e.g. [0, 1].")
    return num_classes


def _logits_stand_in(shape: Tuple[int, ...], device: torch.device) -> torch.Tensor:
    """float32 zero-stride tensor of ``shape`` (N, C, *spatial): nothing is allocated.

    Lets the targets have the losses' checks (``one_hot_target``, ``rarity_vector``) before any logits exist.
    """
    return torch.zeros((), device=device).expand(*shape)


def _label_spatial(y: torch.Tensor, name: str) -> Tuple[int, ...]:
    """Spatial size of a label map (N, 1, *spatial) or (N, *spatial); a size-1 dim 1 is the channel."""
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"{name} must be an integer label map tensor (N, 1, *spatial) or (N, *spatial); "
                         f"got {type(y).__name__}.")
    spatial = tuple(y.shape[2:]) if y.dim() >= 3 and y.shape[1] == 1 else tuple(y.shape[1:])
    if not spatial:
        raise ValueError(f"{name} has shape {tuple(y.shape)}; a label map needs a batch and at least one spatial "
                         f"dimension, (N, 1, *spatial) or (N, *spatial).")
    return spatial


# ---------------------------------------------------------------- mixup (eq. 17-19)

def sample_mixup_lambda(alpha: float, generator: Optional[np.random.Generator] = None, margin: float = 0.0) -> float:
    """Draw the batch's mixing weight ``lam = Beta(alpha, alpha) * (1 - margin)`` (eq. 17, official code).

    The paper uses alpha = 1 (uniform) for asymmetric mixup and alpha = 0.2 (U-shaped, mostly
    near 0 or 1) for symmetric mixup. The official code scales the draw by ``1 - m_mix``
    (METHOD.md §4, v2), so the first patch of a pair never weighs more than ``1 - m_mix``.
    torch's Beta/Gamma samplers take no generator, so the random source is a numpy
    ``Generator``: the same seeded generator gives the same draws.

    Args:
        alpha: concentration > 0 of the symmetric Beta distribution.
        generator: ``np.random.Generator`` (e.g. ``np.random.default_rng(seed)``); None draws
            from fresh OS entropy (not reproducible).
        margin: ``m_mix`` in [0, 1]; 0 gives the plain Beta draw.

    Returns:
        ``lam`` in [0, 1 - margin] as a Python float.
    """
    alpha = check_non_negative(alpha, "alpha", "the Beta(alpha, alpha) concentration of mixup")
    if alpha == 0:
        raise ValueError("alpha must be > 0 (the paper uses 1 for asymmetric and 0.2 for symmetric mixup); got 0.")
    margin = _unit_interval(margin, "margin", "the mixup margin m_mix")
    if generator is None:
        generator = np.random.default_rng()
    if not isinstance(generator, np.random.Generator):
        raise ValueError(f"generator must be a numpy Generator, e.g. np.random.default_rng(seed); "
                         f"got {type(generator).__name__}.")
    return float(generator.beta(alpha, alpha)) * (1.0 - margin)


def mixup_batch(x: torch.Tensor, y: torch.Tensor, lam: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pair every patch with the batch reversed and mix the images (eq. 17).

    Patch ``i`` is mixed with patch ``k = N - 1 - i``: ``lam * x_i + (1 - lam) * x_k``. With
    an odd batch the middle patch is paired with itself and stays as it is.

    Args:
        x: images (N, C_in, *spatial).
        y: label maps (N, 1, *spatial) or (N, *spatial), same batch size.
        lam: mixing weight in [0, 1] of the first patch of each pair.

    Returns:
        ``(x_mixed, y_i, y_k)`` with ``y_i = y`` and ``y_k = y.flip(0)``; pass the label maps to
        :func:`mixup_targets` with the same ``lam``.
    """
    lam = _unit_interval(lam, "lam", "the mixing weight of the first patch")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point image tensor (N, C_in, *spatial); got {type(x).__name__}.")
    if not isinstance(y, torch.Tensor) or y.dim() < 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must be a label map tensor with the batch size of x ({x.shape[0]}); got "
                         f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}.")
    return lam * x + (1 - lam) * x.flip(0), y, y.flip(0)


def mixup_targets(y_i: torch.Tensor, y_k: torch.Tensor, lam: float, rare: Rarity, margin: float,
                  symmetric: bool = False) -> torch.Tensor:
    """Targets of the mixed patches ``lam * x_i + (1 - lam) * x_k`` (asymmetric mixup, eq. 17-19).

    Per voxel, with binary rarity ``rare[j] == 1`` (METHOD.md §4):

    - the two labels are equal -> that label;
    - exactly one of them is rare and its patch's weight (``lam`` for i, ``1 - lam`` for k) is
      strictly greater than ``margin`` -> the rare label;
    - otherwise (both rare, both non-rare, or the rare patch too faint) -> ignored: an all-zero
      row, which gives no cross-entropy gradient and is masked out of Dice by the losses.

    ``symmetric=True`` gives the symmetric baseline: soft labels
    ``lam * onehot(y_i) + (1 - lam) * onehot(y_k)``, nothing ignored.

    Args:
        y_i, y_k: integer label maps (N, 1, *spatial) or (N, *spatial) of the same shape, values
            in [0, C); float maps holding whole numbers are accepted. A size-1 second dimension
            is read as the channel; one-hot targets are not accepted.
        lam: mixing weight in [0, 1] of the ``y_i`` patches (one per batch).
        rare: length-C rarity vector in [0, 1]; only entries equal to 1 count as rare here.
        margin: ``m_mix`` in [0, 1] (paper: 0.05-0.8).
        symmetric: soft labels instead of the asymmetric rule.

    Returns:
        float32 target (N, C, *spatial) on the labels' device.
    """
    lam = _unit_interval(lam, "lam", "the mixing weight of the y_i patches")
    margin = _unit_interval(margin, "margin", "the mixup margin m_mix")
    num_classes = _num_classes(rare)
    spatial = _label_spatial(y_i, "y_i")
    if not isinstance(y_k, torch.Tensor) or tuple(y_k.shape) != tuple(y_i.shape):
        raise ValueError(f"y_k must have the shape of y_i {tuple(y_i.shape)}; got "
                         f"{tuple(y_k.shape) if isinstance(y_k, torch.Tensor) else type(y_k).__name__}.")
    like = _logits_stand_in((y_i.shape[0], num_classes) + spatial, y_i.device)
    is_rare = (rarity_vector(rare, num_classes, like=like) == 1).to(like.dtype)
    y_i_hot = one_hot_target(y_i, like, "y_i")
    y_k_hot = one_hot_target(y_k, like, "y_k")
    if symmetric:
        return lam * y_i_hot + (1 - lam) * y_k_hot
    rare_i = (y_i_hot * is_rare).sum(dim=1, keepdim=True) > 0
    rare_k = (y_k_hot * is_rare).sum(dim=1, keepdim=True) > 0
    same = (y_i_hot * y_k_hot).sum(dim=1, keepdim=True) > 0
    keep_i = same | (rare_i & ~rare_k & (lam > margin))
    keep_k = ~same & rare_k & ~rare_i & ((1 - lam) > margin)
    return y_i_hot * keep_i + y_k_hot * keep_k


# ---------------------------------------------------------------- adversarial training (eq. 14-16)

def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm over all non-batch dims, (N,), in float32 (float64 for float64 input)."""
    return t.to(compute_dtype(t)).flatten(1).norm(dim=1)


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) -> (N, 1, 1, ...) broadcastable against ``like``."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def adversarial_perturbation(model: nn.Module, x: torch.Tensor, target: torch.Tensor, rare: Rarity,
                             xi: float = 1e-5, l: float = 10.0, symmetric: bool = False, use_dice: bool = False,
                             generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Adversarial perturbation of the rare-class voxels, one VAT-style power iteration (eq. 14-16).

    1. probe ``d = xi * u / ||u||_2`` with ``u ~ N(0, I)``, normalised per sample over all
       non-batch dims (the paper's "epsilon" is this probe size, not a constraint radius);
    2. objective on ``model(x + d)``: plain softmax cross-entropy
       (:func:`~AsymSegTrainer.losses.asymmetric_ce`, m = 0, gamma = 0) against the restricted
       target ``Y * r``, so only voxels whose label is rare contribute (a continuous ``r``
       weights them); plus :func:`~AsymSegTrainer.losses.asymmetric_dice` on the same target
       when ``use_dice``. ``symmetric=True`` (the symmetric baseline) uses ``Y`` itself, all voxels;
    3. ``g = d objective / d d`` and ``r_adv = l * g / ||g||_2`` per sample (L2 over channels
       and space). A sample without rare voxels (or with an exactly zero gradient) gets zeros.

    The engine then trains on ``(x + r_adv, Y)`` with the full objective (step 4 of METHOD.md §4).

    The direction is computed in the model's current mode (train mode during training, so it
    is the gradient of the very function the adversarial step trains; dropout, if any, draws
    from the global RNG). The model is left as it was: the gradient is taken with
    ``torch.autograd.grad`` with respect to ``d`` only, so parameters' ``.grad`` are untouched;
    the train/eval flag is never changed; every buffer (e.g. BatchNorm running statistics,
    which a train-mode forward pass updates) is saved before and copied back afterwards.
    Works under autocast: the losses compute in float32.

    Args:
        model: network mapping (N, C_in, *spatial) images to (N, C, *spatial) logits.
        x: images (N, C_in, *spatial), floating point.
        target: label map (N, 1, *spatial) / (N, *spatial), or one-hot/soft (N, C, *spatial).
        rare: length-C rarity vector in [0, 1] (1 = rare, 0 = well represented).
        xi: probe size >= 0 (paper: 1e-5).
        l: perturbation norm per sample >= 0 (paper's l: 10-20 BRATS, 50-100 KiTS).
        symmetric: use every voxel (symmetric adversarial training).
        use_dice: add the Dice term to the objective (runs trained with CE + Dice).
        generator: optional ``torch.Generator`` on ``x``'s device for the random probe.

    Returns:
        Detached tensor of ``x``'s shape, dtype and device.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 3:
        raise ValueError(f"x must be a floating-point image tensor (N, C_in, *spatial); got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}.")
    xi = check_non_negative(xi, "xi", "the size of the random probe, paper: 1e-5")
    l = check_non_negative(l, "l", "the L2 norm of the perturbation per sample, paper: 10-100")
    num_classes = _num_classes(rare)
    like = _logits_stand_in((x.shape[0], num_classes) + tuple(x.shape[2:]), x.device)
    r = rarity_vector(rare, num_classes, like=like)
    y = one_hot_target(target, like, "target")
    objective_target = y if symmetric else y * r
    has_rare = objective_target.flatten(1).sum(dim=1) > 0
    if l == 0 or not has_rare.any():
        return torch.zeros_like(x)

    probe = torch.randn(x.shape, generator=generator, device=x.device, dtype=compute_dtype(x))
    d = (xi * probe / _per_sample(_per_sample_norm(probe), probe)).to(x.dtype).requires_grad_(True)
    saved_buffers = [b.detach().clone() for b in model.buffers()]
    try:
        with torch.enable_grad():
            logits = model(x.detach() + d)
            if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != tuple(y.shape):
                raise ValueError(f"model(x) must return logits of shape {tuple(y.shape)} (N, len(rare), *spatial of "
                                 f"x); got {tuple(logits.shape) if isinstance(logits, torch.Tensor) else logits!r}.")
            objective = asymmetric_ce(logits, objective_target, rare)
            if use_dice:
                objective = objective + asymmetric_dice(logits, objective_target, rare)
            (grad,) = torch.autograd.grad(objective, d, allow_unused=True)
    finally:
        with torch.no_grad():
            for buffer, saved in zip(model.buffers(), saved_buffers):
                buffer.copy_(saved)
    if grad is None:  # the objective does not depend on the input
        return torch.zeros_like(x)
    norm = _per_sample_norm(grad)
    scale = torch.where(has_rare & (norm > 0), l / norm.clamp_min(torch.finfo(norm.dtype).tiny),
                        torch.zeros_like(norm))
    return (grad.to(norm.dtype) * _per_sample(scale, grad)).to(x.dtype).detach()


# ---------------------------------------------------------------- augmentation (eq. 21)

def _augmentation_probability(centred_on_rare: BoolArray, p_fg: float, p_bg: float) -> np.ndarray:
    p_fg = _unit_interval(p_fg, "p_fg", "the augmentation probability of patches centred on a rare class")
    p_bg = _unit_interval(p_bg, "p_bg", "the augmentation probability of the other patches")
    centred = np.asarray(centred_on_rare)
    if centred.dtype != np.bool_:
        raise ValueError(f"centred_on_rare must be a bool or an array of bools (True = patch centred on a rare "
                         f"class); got dtype {centred.dtype}. Convert with np.asarray(..., dtype=bool).")
    return np.where(centred, p_fg, p_bg)


def augmentation_probability(centred_on_rare: BoolArray, p_fg: float = 1.0,
                             p_bg: float = 0.0) -> Union[float, np.ndarray]:
    """Augmentation probability of each patch under asymmetric augmentation (eq. 21).

    Patches centred on a rare class are augmented with probability ``p_fg`` (usually 1), the
    others with ``p_bg`` (paper: 0-50%), so the augmentations widen the rare classes'
    training distribution without spending the budget on background.

    Args:
        centred_on_rare: bool, or bool array of any shape (one entry per patch).
        p_fg: probability in [0, 1] for patches centred on a rare class.
        p_bg: probability in [0, 1] for the other patches.

    Returns:
        A float for a single bool, else a float array of ``centred_on_rare``'s shape.
    """
    prob = _augmentation_probability(centred_on_rare, p_fg, p_bg)
    return float(prob) if prob.ndim == 0 else prob


def choose_patches_to_augment(centred_on_rare: BoolArray, p_fg: float, p_bg: float,
                              rng: np.random.Generator) -> np.ndarray:
    """Draw which patches to augment under asymmetric augmentation (eq. 21).

    Each patch is chosen independently with :func:`augmentation_probability`; the engine
    applies its usual spatial/intensity transforms to the chosen patches only.
    p = 1 always chooses, p = 0 never does.

    Args:
        centred_on_rare: bool array (one entry per patch), True = centred on a rare class.
        p_fg, p_bg: as in :func:`augmentation_probability`.
        rng: ``np.random.Generator``; the same seed gives the same choice.

    Returns:
        Bool array of ``centred_on_rare``'s shape, True = augment.
    """
    prob = _augmentation_probability(centred_on_rare, p_fg, p_bg)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy Generator, e.g. np.random.default_rng(seed); got {type(rng).__name__}.")
    return np.asarray(rng.random(prob.shape) < prob)
