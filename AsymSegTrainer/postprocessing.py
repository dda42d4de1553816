"""Post-processing of predicted label maps, chosen per class on the validation cases (as nnU-Net does).

Candidates per foreground class, from the least to the most invasive (``CANDIDATES``):

- ``none``: the network's output as it is;
- ``min-size=V``: connected components (26-connected, as lesions are counted in
  :mod:`AsymSegTrainer.metrics`) smaller than V mm^3 become background, V in ``MIN_SIZES_MM3``;
- ``largest``: only the largest component is kept, the paper's post-processing (METHOD.md
  §6); on a class with several lesions it deletes every lesion but one.

The choice (``choose_postprocessing``, at the end of a training with validation cases), per
class: only candidates that keep every reference lesion the raw prediction detects on the
validation cases qualify, so none buys DSC by deleting a lesion that was found; going from
the least invasive to the most, a candidate replaces the choice so far only when it raises
the mean validation DSC by more than ``MIN_DSC_GAIN``. So ``none`` stays unless a candidate
clearly helps: a threshold fitted to a few validation cases deletes components on every
unseen case, where predictions of rare structures shrink (METHOD.md §1) and a lesion can be
found by a single voxel; in the demo, a min-size=30 that gained 0.3 DSC points on its
validation case deleted a found lesion of the unseen cases. The choice is stored in the model
file's meta (``postprocessing``) and ``infer`` applies it unless ``--postprocess`` says
otherwise.

A spec is a string, the same on the command line and in the model file: ``none``,
``largest`` or ``min-size=V`` (V in mm^3).
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from .errors import InputError
from .metrics import component_volumes, connected_components, dice, keep_largest_component, lesion_metrics

MIN_SIZES_MM3 = (3.0, 10.0, 30.0, 100.0)
"""Thresholds of the ``min-size`` candidates in mm^3: speckle of a few voxels at 1 mm, then the
bounds of the small lesions (metrics.LESION_SIZE_BINS) and a step on either side."""
_MIN_SIZE = "min-size="


def _min_size(volume: float) -> str:
    """The spec of a ``min-size`` threshold in mm^3, without trailing zeros (``min-size=10``, ``min-size=12.5``)."""
    return _MIN_SIZE + np.format_float_positional(volume, trim="-")


CANDIDATES = ("none",) + tuple(_min_size(v) for v in MIN_SIZES_MM3) + ("largest",)
"""Candidate specs, least invasive first (the order the choice walks)."""
MIN_DSC_GAIN = 0.01
"""Mean validation DSC a more invasive candidate must add (one DSC point): smaller gains are noise
on a few validation cases and do not pay for deleting components on unseen ones."""
CRITERION = ("from the least invasive candidate (none, min-size ascending, largest) to the most, one that keeps every "
             "reference lesion the raw prediction detects on the validation cases replaces the choice so far when "
             f"it raises the mean validation DSC by more than {MIN_DSC_GAIN}")
_HINT = "Use none, largest or min-size=V (V in mm³, e.g. min-size=10)."


def parse_postprocessing(spec) -> str:
    """The canonical form of a spec (``"none"``, ``"largest"``, ``"min-size=10"``); InputError for anything else."""
    text = spec.strip().lower() if isinstance(spec, str) else ""
    if text in ("none", "largest"):
        return text
    if text.startswith(_MIN_SIZE):
        try:
            volume = float(text[len(_MIN_SIZE):])
        except ValueError:
            volume = math.nan
        if math.isfinite(volume) and volume > 0:
            return _min_size(volume)
    raise InputError(f"Unknown post-processing {spec!r}.", _HINT)


def describe_postprocessing(spec: str) -> str:
    """A spec in words, for reports and logs: ``"min-size=10"`` -> ``"components smaller than 10 mm³ removed"``."""
    spec = parse_postprocessing(spec)
    if spec == "none":
        return "none (the network's output)"
    if spec == "largest":
        return "largest connected component only"
    return f"components smaller than {spec[len(_MIN_SIZE):]} mm³ removed"


def apply_postprocessing(labels: np.ndarray, per_class: Mapping[str, str], class_names: Sequence[str],
                         spacing: Sequence[float]) -> np.ndarray:
    """A copy of the class-index map ``labels`` with each foreground class post-processed.

    ``per_class``: class name -> spec (a class not listed: ``none``); ``class_names`` in index
    order (index 0 = background); ``spacing``: mm per array axis, for the volumes of
    ``min-size``. Removed voxels become background (0); other classes are left as they are.
    """
    out = np.array(labels, copy=True)
    for index, name in enumerate(class_names[1:], 1):
        spec = parse_postprocessing(per_class.get(name, "none"))
        if spec == "largest":
            out = keep_largest_component(out, [index])
        elif spec != "none":
            components, count = connected_components(out == index)
            small = component_volumes(components, count, spacing) < float(spec[len(_MIN_SIZE):])
            small[0] = False  # the background
            out[small[components]] = 0
    return out


def resolve_postprocessing(requested: Optional[str], class_names: Sequence[str],
                           meta: Optional[dict] = None) -> Dict[str, str]:
    """Class name -> spec for every foreground class: what ``infer`` / ``evaluate`` apply.

    ``requested`` (``--postprocess``) applies to every class; without it the model's choice
    (``meta["postprocessing"]["classes"]``, written by training); a model without one
    (trained without validation cases, or before the choice existed): ``none``.
    """
    if requested is not None:
        spec = parse_postprocessing(requested)
        return {name: spec for name in class_names[1:]}
    stored = ((meta or {}).get("postprocessing") or {}).get("classes") or {}
    return {name: parse_postprocessing(stored.get(name, "none")) for name in class_names[1:]}


def _score(cases: list, index: int, name: str, spec: str, class_names: Sequence[str]) -> dict:
    """Mean DSC, detected and false-positive lesions of class ``index`` over ``cases`` after ``spec``."""
    dscs, detected, false_positive = [], 0, 0
    for prediction, reference, spacing in cases:
        pred = apply_postprocessing(prediction, {name: spec}, class_names, spacing) == index
        ref = np.asarray(reference) == index
        dscs.append(dice(int(np.count_nonzero(pred & ref)), int(np.count_nonzero(pred)), int(np.count_nonzero(ref))))
        lesions = lesion_metrics(pred, ref, spacing)
        detected += lesions["lesions_detected"]
        false_positive += lesions["lesions_false_positive"]
    return {"dsc": float(np.mean(dscs)), "lesions_detected": detected, "lesions_false_positive": false_positive}


def choose_postprocessing(predictions: Sequence[np.ndarray], references: Sequence[np.ndarray],
                          spacings: Sequence[Sequence[float]], class_names: Sequence[str]) -> dict:
    """The post-processing of each foreground class that is best on the validation cases (``CRITERION``).

    ``predictions`` / ``references``: the validation cases' raw predicted and reference
    class-index maps (one pair per case, equal shapes); ``spacings``: their mm per array
    axis; ``class_names`` in index order. Returns the record for the model meta:
    ``{"classes": {name: spec}, "criterion", "candidates", "validation_cases",
    "scores": {name: {spec: {"dsc", "lesions_detected", "lesions_false_positive"}}}}``.
    """
    cases = list(zip(predictions, references, spacings))
    if not cases or not len(predictions) == len(references) == len(spacings):
        raise ValueError(f"give one prediction, reference and spacing per validation case; got {len(predictions)}, "
                         f"{len(references)} and {len(spacings)}")
    for prediction, reference, _ in cases:
        if np.shape(prediction) != np.shape(reference):
            raise ValueError(f"prediction {np.shape(prediction)} and reference {np.shape(reference)} differ in shape")
    chosen, scores = {}, {}
    for index, name in enumerate(class_names[1:], 1):
        scores[name] = {spec: _score(cases, index, name, spec, class_names) for spec in CANDIDATES}
        found = scores[name]["none"]["lesions_detected"]
        best = "none"
        for spec in CANDIDATES[1:]:
            score = scores[name][spec]
            if score["lesions_detected"] == found and score["dsc"] > scores[name][best]["dsc"] + MIN_DSC_GAIN:
                best = spec
        chosen[name] = best
    return {"classes": chosen, "criterion": CRITERION, "candidates": list(CANDIDATES), "validation_cases": len(cases),
            "scores": scores}
