"""Post-hoc logit offsets: move a rare class's decision boundary back after training.

The paper's diagnosis (METHOD.md §1) is that on unseen cases the logits of a rare class shift
towards the decision boundary, so the class is under-segmented. Post-hoc logit adjustment
answers that without retraining: a per-class offset ``o_c`` added to the logits before the
arg-max, ``argmax_k (z_k + o_k)``; a positive offset grows the class. No segmentation tool
offers it (nnU-Net users threshold probabilities by hand).

:func:`fit_offsets` chooses one offset per rare class on validation cases by a 1-D grid search
(``CRITERION``). For class c, with the other classes' offsets fixed, a voxel is predicted c
exactly when ``r = z_c - max_{k != c} (z_k + o_k) > -o_c``, so the class's DSC at every offset
of the grid comes from one sort of ``r``: the search is exact and fast on whole volumes. Rare
classes are fitted one after another (coordinate-wise, in class order).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from .errors import InputError

OFFSET_GRID = np.round(np.arange(-8.0, 8.0 + 1e-9, 0.25), 2)
"""Offsets tried, in logit units: trained networks' rare-class logit shifts are a few units (METHOD.md §1)."""
CRITERION = ("the class's mean DSC over the validation cases, by a grid search of offsets from -8 to +8 logit units "
             "in steps of 0.25; among equal scores the offset closest to 0")


def parse_offsets(strings: Sequence[str], class_names: Sequence[str]) -> Dict[str, float]:
    """``--logit-offset NAME=VALUE`` strings -> class name -> offset; InputError naming a bad one."""
    offsets: Dict[str, float] = {}
    hint = f"Write NAME=VALUE with a class of the model ({', '.join(class_names)}), e.g. {class_names[-1]}=1.5."
    for text in strings:
        name, sep, value = str(text).partition("=")
        name = name.strip()
        if not sep or name not in class_names:
            raise InputError(f"--logit-offset {text!r}: {'no class ' + repr(name) if sep else 'not NAME=VALUE'} "
                             f"in the model", hint)
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not np.isfinite(number):
            raise InputError(f"--logit-offset {text!r}: {value!r} is not a finite number", hint)
        if name in offsets:
            raise InputError(f"--logit-offset gives class {name!r} twice", "Give each class at most once.")
        offsets[name] = number
    return offsets


def offset_vector(offsets: Optional[Dict[str, float]], class_names: Sequence[str]) -> Optional[np.ndarray]:
    """The offsets as a (C,) float32 vector in class order (0 for classes not named); None when there are none."""
    if not offsets:
        return None
    return np.array([float(offsets.get(name, 0.0)) for name in class_names], np.float32)


def adjust(logits: np.ndarray, vector: Optional[np.ndarray]) -> np.ndarray:
    """Logits (C, ...) plus the offset of each class (unchanged when ``vector`` is None)."""
    if vector is None:
        return logits
    return logits + vector.reshape((-1,) + (1,) * (logits.ndim - 1))


def _dsc_curve(r: np.ndarray, truth: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """DSC of {r > -o} against ``truth`` for every offset o of ``grid`` (NaN when both are empty)."""
    all_sorted = np.sort(r)
    true_sorted = np.sort(r[truth])
    predicted = r.size - np.searchsorted(all_sorted, -grid, side="right")
    hits = true_sorted.size - np.searchsorted(true_sorted, -grid, side="right")
    denominator = predicted + true_sorted.size
    return np.where(denominator > 0, 2.0 * hits / np.maximum(denominator, 1), np.nan)


def fit_offsets(logits: Sequence[np.ndarray], labels: Sequence[np.ndarray], class_names: Sequence[str],
                rarity: Sequence[float], grid: np.ndarray = OFFSET_GRID) -> dict:
    """One offset per rare class (rarity > 0) from validation cases' logits (C, ...) and class-index labels.

    Returns the record stored in the model meta: ``{"offsets": {name: value}, "criterion",
    "validation_cases", "dsc_before": {name: mean DSC}, "dsc_after": {...}}``. A class absent
    from every validation case keeps offset 0 (its DSC is undefined there).
    """
    if not logits or len(logits) != len(labels):
        raise ValueError(f"give one logits array and one label map per validation case; got {len(logits)} and "
                         f"{len(labels)}")
    vector = np.zeros(len(class_names), np.float32)
    before, after = {}, {}
    zero = int(np.flatnonzero(grid == 0)[0])
    for c, name in enumerate(class_names):
        if rarity[c] <= 0:
            continue
        curves = []
        for z, y in zip(logits, labels):
            truth = np.asarray(y) == c
            if not truth.any():
                continue
            others = np.delete(adjust(np.asarray(z, np.float32), vector), c, axis=0).max(axis=0)
            curves.append(_dsc_curve((np.asarray(z[c], np.float32) - others).ravel(), truth.ravel(), grid))
        if not curves:
            continue
        mean = np.mean(curves, axis=0)  # every case here shows the class: its DSC is defined
        best = mean.max()
        candidates = np.flatnonzero(mean >= best - 1e-12)
        choice = int(candidates[np.argmin(np.abs(grid[candidates]))])
        vector[c] = grid[choice]
        before[name], after[name] = float(mean[zero]), float(mean[choice])
    return {"offsets": {name: float(vector[c]) for c, name in enumerate(class_names) if rarity[c] > 0},
            "criterion": CRITERION, "validation_cases": len(logits), "dsc_before": before, "dsc_after": after}


def describe(record: dict) -> str:
    """One line per class: the offset and what it did on the validation cases."""
    parts = []
    for name, offset in record["offsets"].items():
        if name in record["dsc_before"]:
            parts.append(f"{name} offset {offset:+g}: validation DSC {record['dsc_before'][name]:.3f} -> "
                         f"{record['dsc_after'][name]:.3f}")
        else:
            parts.append(f"{name}: no validation voxel, offset 0")
    return "; ".join(parts)


def stored_offsets(meta: dict, path) -> Dict[str, float]:
    """The offsets ``calibrate`` (or training) stored in a model's meta; InputError when there are none."""
    record = meta.get("calibration")
    if not record or not isinstance(record.get("offsets"), dict):
        raise InputError(f"The model {path} holds no calibrated offsets.",
                         "Run python -m AsymSegTrainer calibrate --model MODEL first (it needs validation cases), "
                         "or give offsets with --logit-offset NAME=VALUE.")
    return {str(k): float(v) for k, v in record["offsets"].items()}


def case_logits(predictor, specs, overlap: float, sink=None) -> tuple:
    """(logits on the model's grid, class-index labels on it) of labelled cases, for fitting offsets."""
    from .data import load_case
    from .inference import predict_case

    logits: List[np.ndarray] = []
    labels: List[np.ndarray] = []
    for i, spec in enumerate(specs, 1):
        if sink is not None:
            sink.emit("progress", phase="calibrate", iteration=i, total=len(specs), case=spec.id)
        case = load_case(spec, predictor.class_map, predictor.normalization, predictor.meta.get("target_spacing"))
        logits.append(predict_case(predictor, case, overlap, None))
        labels.append(case.label)
    return logits, labels
