"""Per-case segmentation metrics (voxel- and lesion-wise), largest-component post-processing, Markdown tables.

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

Lesion-wise (``lesion_metrics``; a missed lesion matters more than a voxel): a lesion is a
connected component of a class with full connectivity (26 in 3D, 8 in 2D). A reference
lesion is *detected* when at least one predicted voxel of the class overlaps it; a predicted
component that overlaps no reference voxel of the class is a *false positive*. One predicted
component bridging two reference lesions detects both and is no false positive. Per class:

    lesions_reference, lesions_detected, lesions_predicted, lesions_false_positive
    lesion_sensitivity = lesions_detected / lesions_reference   (None without reference lesions)

and the same per size bin (``LESION_SIZE_BINS``) with the prefix ``small_``, ``medium_`` or
``large_`` (``small_lesions_detected``, ``small_lesion_sensitivity``, ...): a reference
lesion's bin is its own volume, so is a predicted component's (for ``lesions_predicted`` and
``lesions_false_positive``). Volume = voxels x voxel volume in mm^3 (area in mm^2 for 2D maps).
"""

from __future__ import annotations

import math
import warnings
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance
from scipy import ndimage

from .formatting import LESION_TITLES, lesion_cells

__all__ = ["case_metrics", "summarize", "summarize_metrics", "keep_largest_component", "metrics_table_markdown",
           "lesion_metrics", "lesion_totals", "lesion_size_table_markdown", "lesion_size_labels",
           "connected_components", "component_volumes", "dice", "LESION_SIZE_BINS", "LESION_PREFIXES"]

VOXEL_KEYS = ("dsc", "sensitivity", "precision", "specificity", "hd95")
"""The voxel metrics of ``case_metrics`` that summaries average."""

LESION_SIZE_BINS = {"small": 10.0, "medium": 100.0, "large": math.inf}
"""Lesion size bins: name -> upper volume bound in mm^3 (exclusive; the lower bound is the bound
before). In equivalent-sphere diameters: small < 2.7 mm (10 voxels at 1 mm), where partial
volume makes a lesion uncertain even for raters (MS lesion criteria start at about 3 mm, a
14 mm^3 sphere); medium 2.7-5.8 mm; large >= 5.8 mm (100 mm^3), above the 5 mm that
brain-metastasis detection studies often use to split off small lesions. Decade steps, so a
lesion's bin does not hinge on a voxel more or less."""

LESION_PREFIXES = ("",) + tuple(f"{name}_" for name in LESION_SIZE_BINS)
"""Key prefixes of the lesion-wise metrics: all lesions, then each size bin."""

LESION_COUNTS = ("lesions_reference", "lesions_detected", "lesions_predicted", "lesions_false_positive")
LESION_SENSITIVITY = "lesion_sensitivity"


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


def dice(tp: int, predicted: int, referenced: int) -> float:
    """DSC = 2TP / (2TP + FP + FN) = 2TP / (predicted + reference voxels); 1.0 when both masks are empty."""
    return 2 * tp / (predicted + referenced) if predicted or referenced else 1.0


def connected_components(mask: np.ndarray) -> Tuple[np.ndarray, int]:
    """``(components, count)`` of a boolean mask: ``scipy.ndimage.label`` with full connectivity.

    Full connectivity (26 neighbours in 3D, 8 in 2D) counts two voxels that touch at a corner
    as one lesion, the usual convention of lesion-wise evaluation. ``components`` has the
    mask's shape, 0 outside the mask and 1 .. ``count`` inside.
    """
    return ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, mask.ndim))


def component_volumes(components: np.ndarray, count: int, spacing: Sequence[float]) -> np.ndarray:
    """Volume in mm^3 of each component of ``connected_components``, shape (count + 1,); index 0 is the background.

    Voxels x voxel volume (``spacing``: mm per array axis), rounded to 1e-6 mm^3 so a
    component exactly on a bin edge or a size threshold is not moved across it by float rounding.
    """
    voxel_mm3 = float(np.prod(_spacing(spacing, components.ndim)))
    return np.round(np.bincount(components.ravel(), minlength=count + 1) * voxel_mm3, 6)


def _size_bins(volumes: np.ndarray) -> np.ndarray:
    """Index into ``LESION_SIZE_BINS`` of each volume (mm^3)."""
    return np.digitize(volumes, list(LESION_SIZE_BINS.values())[:-1])


def lesion_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> Dict[str, Optional[float]]:
    """Lesion-wise counts of one class: predicted and reference boolean masks of equal shape (module docstring).

    ``spacing``: mm per array axis (sizes are in mm^3). Returns the ``LESION_COUNTS`` and
    ``lesion_sensitivity`` of all lesions and, with a bin prefix, of each size bin.
    """
    ref_components, n_ref = connected_components(ref)
    pred_components, n_pred = connected_components(pred)
    overlap = pred & ref
    detected = np.zeros(n_ref + 1, bool)
    detected[ref_components[overlap]] = True
    touching = np.zeros(n_pred + 1, bool)
    touching[pred_components[overlap]] = True
    ref_bins = _size_bins(component_volumes(ref_components, n_ref, spacing)[1:])
    pred_bins = _size_bins(component_volumes(pred_components, n_pred, spacing)[1:])
    result: Dict[str, Optional[float]] = {}
    for index, prefix in enumerate(LESION_PREFIXES):
        in_ref = ref_bins == index - 1 if prefix else np.ones(n_ref, bool)
        in_pred = pred_bins == index - 1 if prefix else np.ones(n_pred, bool)
        reference, found = int(in_ref.sum()), int((detected[1:] & in_ref).sum())
        result.update({f"{prefix}lesions_reference": reference, f"{prefix}lesions_detected": found,
                       f"{prefix}lesions_predicted": int(in_pred.sum()),
                       f"{prefix}lesions_false_positive": int((in_pred & ~touching[1:]).sum()),
                       f"{prefix}{LESION_SENSITIVITY}": _ratio(found, reference)})
    return result


def case_metrics(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float],
                 classes: Optional[Sequence[int]] = None) -> dict[int, dict]:
    """Metrics of one case, per foreground class (default: 1 .. the largest label in either map).

    ``prediction`` and ``reference`` are integer class-index maps of equal shape (2D or 3D);
    ``spacing`` gives mm per voxel for each array axis, in array order. Per class: the voxel
    metrics and counts, and the lesion-wise metrics of ``lesion_metrics``.
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
            "dsc": dice(tp, predicted, referenced),
            "sensitivity": _ratio(tp, tp + fn),
            "precision": _ratio(tp, tp + fp),
            "specificity": _ratio(tn, tn + fp),
            "hd95": hd95,
            "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "reference_voxels": referenced,
            "predicted_voxels": predicted,
            "empty_reference": referenced == 0,
            "empty_prediction": predicted == 0,
            **lesion_metrics(pred, ref, spacing_mm),
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


def summarize_metrics(records: Iterable[dict], keys: Sequence[str] = VOXEL_KEYS) -> Dict[str, dict]:
    """``{key: summarize(values)}`` over ``case_metrics`` results of one class (or pooled over classes).

    Covers the voxel metrics ``keys`` and every lesion count and lesion sensitivity (all size
    bins): the mean weighs every case once. Lesion counts add ``total`` (the sum over the
    cases) and lesion sensitivities ``pooled`` (total detected / total reference lesions, None
    without any), which weighs every lesion once. A record without a key (a result from before
    lesion-wise metrics) counts as undefined, and a total is None when no record has it.
    """
    records = list(records)
    lesion_keys = [prefix + key for prefix in LESION_PREFIXES for key in LESION_COUNTS + (LESION_SENSITIVITY,)]
    summary = {key: summarize(record.get(key) for record in records) for key in list(keys) + lesion_keys}
    for prefix in LESION_PREFIXES:
        for key in LESION_COUNTS:
            values = [record[prefix + key] for record in records if record.get(prefix + key) is not None]
            summary[prefix + key]["total"] = int(sum(values)) if values else None
        found, reference = (summary[prefix + key]["total"] for key in ("lesions_detected", "lesions_reference"))
        summary[prefix + LESION_SENSITIVITY]["pooled"] = None if reference is None else _ratio(found, reference)
    return summary


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
    out = labels.copy()
    for c in targets:
        components, count = connected_components(labels == c)
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


def _mean_cell(values: Iterable[Optional[float]], percent: bool) -> str:
    """A "mean ± std" cell of the defined values, "(n=2/3)" added when some are undefined; "–" when none is."""
    s = summarize(values)
    cell = "–" if s["mean"] is None else f"{_number(s['mean'], percent)} ± {_number(s['std'], percent)}"
    return cell + (f" (n={s['n']}/{s['n'] + s['n_undefined']})" if s["n_undefined"] else "")


_CELL_KEYS = ("lesions_detected", "lesions_reference", "lesions_false_positive")
"""The counts behind ``formatting.lesion_cells``, in its argument order."""


def _lesions(m: dict) -> tuple:
    """(detected, reference, false positive) lesions of a metrics dict; None for a result without them."""
    return tuple(m.get(key) for key in _CELL_KEYS)


def lesion_totals(summary: dict, prefix: str = "") -> list:
    """``formatting.lesion_cells`` of the lesions of all cases in a ``summarize_metrics`` result.

    ``prefix``: a size bin's (``"small_"``, ...), or "" for all lesions.
    """
    return lesion_cells(*(summary[prefix + key]["total"] for key in _CELL_KEYS))


def metrics_table_markdown(per_case: dict[str, dict[int, dict]], class_names: dict[int, str]) -> str:
    """Markdown table of ``case_metrics`` results: one row per case and class, then mean ± std and totals per class.

    DSC/SEN/PRC/SPEC are percentages with 1 decimal (as in the paper's tables), HD95 is in mm
    with 2 decimals, undefined values are "–". A mean over fewer cases than the class has
    rows says so, e.g. "(n=2/3)". Classes missing from ``class_names`` are shown as "class N".
    The lesion columns (``formatting.LESION_TITLES``) are per case; the "mean ± std" row
    averages them per case, the "total" row adds the lesions of all cases (every lesion
    counts once in its sensitivity).
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

    titles = [title for _, title, _ in _COLUMNS] + list(LESION_TITLES)
    lines = ["| Case | Class | " + " | ".join(titles) + " |", "|---|---|" + "---:|" * len(titles)]
    for case, by_class in per_case.items():
        for c in sorted(by_class):
            cells = ["–" if by_class[c][k] is None else _number(by_class[c][k], pct) for k, _, pct in _COLUMNS]
            lines.append(f"| {_cell(case)} | {name(c)} | " + " | ".join(cells + lesion_cells(*_lesions(by_class[c])))
                         + " |")
    for c in sorted({c for by_class in per_case.values() for c in by_class}):
        rows = [by_class[c] for by_class in per_case.values() if c in by_class]
        numbers = [_lesions(m) for m in rows]
        per_case_lesions = ([d for d, _, _ in numbers], [None if d is None else r - d for d, r, _ in numbers],
                            [fp for _, _, fp in numbers], [m.get(LESION_SENSITIVITY) for m in rows])
        cells = [_mean_cell((m[key] for m in rows), pct) for key, _, pct in _COLUMNS]
        cells += [_mean_cell(values, pct) for values, pct in zip(per_case_lesions, (False, False, False, True))]
        lines.append(f"| mean ± std | {name(c)} | " + " | ".join(cells) + " |")
        totals = lesion_totals(summarize_metrics(rows, keys=()))
        lines.append(f"| total | {name(c)} | " + " | ".join([""] * len(_COLUMNS) + totals) + " |")
    return "\n".join(lines) + "\n"


def lesion_size_labels() -> Dict[str, str]:
    """Size bin name -> its label in tables, e.g. ``"small (< 10 mm³)"``, from ``LESION_SIZE_BINS``."""
    labels, low = {}, 0.0
    for name, high in LESION_SIZE_BINS.items():
        labels[name] = (f"{name} (< {high:g} mm³)" if low == 0 else f"{name} (≥ {low:g} mm³)" if math.isinf(high)
                        else f"{name} ({low:g}–{high:g} mm³)")
        low = high
    return labels


def lesion_size_table_markdown(per_case: dict[str, dict[int, dict]], class_names: dict[int, str]) -> str:
    """Markdown table of lesion detection by size: per class and size bin, the lesions of all cases added up.

    ``per_case`` as for ``metrics_table_markdown``. A reference lesion counts in the bin of its
    own volume, a false-positive component in the bin of its own.
    """
    lines = ["| Class | Lesion size | " + " | ".join(LESION_TITLES) + " |", "|---|---|" + "---:|" * len(LESION_TITLES)]
    for c in sorted({c for by_class in per_case.values() for c in by_class}):
        summary = summarize_metrics((by_class[c] for by_class in per_case.values() if c in by_class), keys=())
        for name, label in lesion_size_labels().items():
            lines.append(f"| {_cell(class_names.get(c, f'class {c}'))} | {label} | "
                         + " | ".join(lesion_totals(summary, f"{name}_")) + " |")
    return "\n".join(lines) + "\n"
