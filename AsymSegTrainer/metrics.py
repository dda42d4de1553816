"""Per-case segmentation metrics, largest-component post-processing and a Markdown report.

METHOD.md §6: per case and per foreground class c, with TP/FP/FN/TN counted on the masks
``prediction == c`` and ``reference == c``,

    DSC = 2TP / (2TP + FP + FN)     sensitivity = TP / (TP + FN)
    precision = TP / (TP + FP)      specificity = TN / (TN + FP)

and HD95, the 95th-percentile symmetric Hausdorff distance in millimetres (MONAI's
``compute_hausdorff_distance``: surface voxels of both masks, the 95th percentile of each
directed set of nearest-surface distances in physical spacing, the larger of the two).

Empty masks are reported explicitly (flags ``empty_reference`` / ``empty_prediction``)
and undefined values are ``None`` (JSON null), never NaN:

    ===========================  =====  ===========  =========  ====
    case                         dsc    sensitivity  precision  hd95
    ===========================  =====  ===========  =========  ====
    both empty                   1.0    None         None       0.0
    reference empty, pred. not   0.0    None         0.0        None
    prediction empty, ref. not   0.0    0.0          None       None
    ===========================  =====  ===========  =========  ====

Specificity is ``None`` when the class fills the whole reference image (TN + FP = 0).
``summarize`` averages over defined values only and counts the undefined ones, so a mean
never hides an empty case. Everything returned is plain Python (JSON-serialisable).
"""

from __future__ import annotations

import math
import warnings
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance
from scipy import ndimage

__all__ = ["case_metrics", "summarize", "keep_largest_component", "metrics_table_markdown"]


def _label_map(array, name: str) -> np.ndarray:
    """Validate a 2D/3D integer (or boolean) class-index map and return it as an ndarray."""
    array = np.asarray(array)
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise ValueError(f"{name} must be an integer class-index map; got dtype {array.dtype}. "
                         f"Take the argmax of probabilities, or cast a label image with .astype(np.int64).")
    if array.ndim not in (2, 3) or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 2D or 3D array; got shape {array.shape}.")
    if array.min() < 0:
        raise ValueError(f"{name} contains negative values; class indices must be >= 0 (0 = background).")
    return array


def _class_list(classes: Iterable[int], name: str = "classes") -> list[int]:
    """Validate foreground class indices (integers >= 1) and return them sorted and unique."""
    result = set()
    for c in classes:
        if isinstance(c, (bool, np.bool_)) or not isinstance(c, (int, np.integer)) or c < 1:
            raise ValueError(f"{name} must contain foreground class indices (integers >= 1); got {c!r}.")
        result.add(int(c))
    return sorted(result)


def _spacing(spacing: Sequence[float], ndim: int) -> list[float]:
    try:
        values = [float(s) for s in spacing]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"spacing must be a sequence of {ndim} numbers (mm per voxel); got {spacing!r}.") from exc
    if len(values) != ndim:
        raise ValueError(f"spacing has {len(values)} entries but the maps are {ndim}D; give one spacing per array "
                         f"axis in array order (for a SimpleITK image that is reversed(image.GetSpacing())).")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing values must be finite and > 0 (mm per voxel); got {values}.")
    return values


def _ratio(numerator: int, denominator: int) -> Optional[float]:
    return numerator / denominator if denominator else None


def _hd95(pred: np.ndarray, ref: np.ndarray, spacing: list[float]) -> float:
    """HD95 in mm of two non-empty boolean masks, computed by MONAI (float32 precision)."""
    with warnings.catch_warnings():
        # MONAI 1.5+ warns about an argument its own get_edge_surface_distance passes.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
        hd = compute_hausdorff_distance(torch.from_numpy(pred)[None, None], torch.from_numpy(ref)[None, None],
                                        include_background=True, percentile=95, spacing=spacing)
    return float(hd[0, 0])


def case_metrics(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float],
                 classes: Optional[Sequence[int]] = None) -> dict[int, dict]:
    """Metrics of one case, per foreground class (default: 1 .. the largest label in either map).

    ``prediction`` and ``reference`` are integer class-index maps of equal shape (2D or 3D);
    ``spacing`` gives mm per voxel for each array axis, in array order.
    """
    prediction = _label_map(prediction, "prediction")
    reference = _label_map(reference, "reference")
    if prediction.shape != reference.shape:
        raise ValueError(f"reference has shape {reference.shape} but prediction has shape {prediction.shape}; "
                         f"resample both onto the same voxel grid first.")
    spacing_mm = _spacing(spacing, prediction.ndim)
    if classes is None:
        classes = range(1, int(max(prediction.max(), reference.max())) + 1)
    results = {}
    for c in _class_list(classes):
        pred, ref = prediction == c, reference == c
        # Counted with numpy: exact integers, and MONAI's confusion-matrix metrics give NaN
        # where we need the documented None conventions.
        tp = int(np.count_nonzero(pred & ref))
        predicted, referenced = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
        fp, fn = predicted - tp, referenced - tp
        tn = int(prediction.size) - tp - fp - fn
        if predicted and referenced:
            hd95 = _hd95(pred, ref, spacing_mm)
        else:
            hd95 = 0.0 if predicted == referenced == 0 else None
        results[c] = {
            "dsc": _ratio(2 * tp, 2 * tp + fp + fn) if predicted or referenced else 1.0,
            "sensitivity": _ratio(tp, tp + fn),
            "precision": _ratio(tp, tp + fp),
            "specificity": _ratio(tn, tn + fp),
            "hd95": hd95,
            "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "reference_voxels": referenced,
            "predicted_voxels": predicted,
            "empty_reference": referenced == 0,
            "empty_prediction": predicted == 0,
        }
    return results


def summarize(values: Iterable[Optional[float]]) -> dict:
    """Mean and population standard deviation (ddof=0) of the defined values.

    ``None`` marks an undefined value (e.g. HD95 with an empty mask): it is skipped and
    counted in ``n_undefined``; ``n`` counts the defined ones. Mean and std are ``None``
    when nothing is defined. NaN or infinity is rejected so it cannot leak into a mean.
    """
    defined, undefined = [], 0
    for v in values:
        if v is None:
            undefined += 1
            continue
        try:
            v = float(v)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"values must be numbers or None (undefined); got {v!r}.") from exc
        if not math.isfinite(v):
            raise ValueError(f"values contains {v}; mark undefined values with None instead of NaN/inf.")
        defined.append(v)
    if not defined:
        return {"mean": None, "std": None, "n": 0, "n_undefined": undefined}
    return {"mean": float(np.mean(defined)), "std": float(np.std(defined)), "n": len(defined),
            "n_undefined": undefined}


def keep_largest_component(labels: np.ndarray, classes: Optional[Sequence[int]] = None) -> np.ndarray:
    """Keep only the largest connected component of each foreground class; the rest becomes 0.

    Classes are processed independently (default: every label > 0 present) with full
    connectivity (8 in 2D, 26 in 3D). On a tie the component met first in a row-major
    scan (lowest ``scipy.ndimage.label`` index) is kept. Returns a new array.
    """
    # Not MONAI's KeepLargestConnectedComponent: it needs scikit-image (not a dependency)
    # and breaks ties through an unstable argsort.
    labels = _label_map(labels, "labels")
    targets = _class_list(classes) if classes is not None else [int(c) for c in np.unique(labels) if c > 0]
    structure = ndimage.generate_binary_structure(labels.ndim, labels.ndim)
    out = labels.copy()
    for c in targets:
        components, count = ndimage.label(labels == c, structure=structure)
        if count > 1:
            sizes = np.bincount(components.ravel())
            sizes[0] = 0
            out[(components > 0) & (components != sizes.argmax())] = 0
    return out


_COLUMNS = (("dsc", "DSC (%)", True), ("sensitivity", "SEN (%)", True), ("precision", "PRC (%)", True),
            ("specificity", "SPEC (%)", True), ("hd95", "HD95 (mm)", False))


def _cell(text) -> str:
    """Text for a Markdown table cell (a "|" would end the cell)."""
    return str(text).replace("|", r"\|")


def _number(value: float, percent: bool) -> str:
    return f"{100 * value:.1f}" if percent else f"{value:.2f}"


def metrics_table_markdown(per_case: dict[str, dict[int, dict]], class_names: dict[int, str]) -> str:
    """Markdown table of ``case_metrics`` results: one row per case and class, then mean ± std per class.

    DSC/SEN/PRC/SPEC are percentages with 1 decimal (as in the paper's tables), HD95 is in mm
    with 2 decimals, undefined values are "–". A mean over fewer cases than the class has
    rows says so, e.g. "(n=2/3)". Classes missing from ``class_names`` are shown as "class N".
    """
    if not isinstance(per_case, dict) or not all(isinstance(m, dict) for m in per_case.values()):
        raise ValueError("per_case must map case id -> case_metrics(...) result (class index -> metrics dict).")
    keys = [key for key, _, _ in _COLUMNS]
    for case, by_class in per_case.items():
        for c, m in by_class.items():
            if not isinstance(m, dict) or any(k not in m for k in keys):
                raise ValueError(f"per_case[{case!r}][{c!r}] lacks the keys {keys}; pass case_metrics(...) results.")

    def name(c: int) -> str:
        return _cell(class_names.get(c, f"class {c}"))

    lines = ["| Case | Class | " + " | ".join(title for _, title, _ in _COLUMNS) + " |",
             "|---|---|" + "---:|" * len(_COLUMNS)]
    for case, by_class in per_case.items():
        for c in sorted(by_class):
            cells = ["–" if by_class[c][k] is None else _number(by_class[c][k], pct) for k, _, pct in _COLUMNS]
            lines.append(f"| {_cell(case)} | {name(c)} | " + " | ".join(cells) + " |")
    for c in sorted({c for by_class in per_case.values() for c in by_class}):
        cells = []
        for key, _, pct in _COLUMNS:
            s = summarize(by_class[c][key] for by_class in per_case.values() if c in by_class)
            cell = "–" if s["mean"] is None else f"{_number(s['mean'], pct)} ± {_number(s['std'], pct)}"
            if s["n_undefined"]:
                cell += f" (n={s['n']}/{s['n'] + s['n_undefined']})"
            cells.append(cell)
        lines.append(f"| mean ± std | {name(c)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
