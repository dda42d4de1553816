"""``rank``: which unlabelled case to annotate next, by how much the model hesitates about the rare classes.

The measure. For a rare class c (rarity > 0), a voxel's margin is ``m_c = z_c - max_{k != c} z_k``
(logit units; > 0 where c is predicted, 0 on the decision boundary). Over the case, with ``V`` a
volume in mL and the rare classes pooled::

    score = V(|m_c| < BAND) / V(m_c > -BAND)        BAND = 2 logit units

the *hesitant* volume over the *candidate* volume: of the region the model calls rare or
nearly calls rare, the share where it hesitates. 0 when the model is sure everywhere, 1
when nothing it sees of the rare class is confident.

Why this measure:

- It needs no label: it reads the predicted structure only, from the network's own logits
  (no logit offsets), so it ranks cases nobody has annotated yet.
- It looks where the paper's diagnosis says the errors are (METHOD.md §1): on unseen cases a
  rare class's logits slide towards the decision boundary and the class is under-segmented.
  A half-recognised lesion shows as margins just below or above 0; ``|m| < 2`` is a softmax
  probability between 0.12 and 0.88 where two classes compete.
- Dividing by the candidate volume keeps a large, well-segmented tumour, whose boundary shell
  always hesitates, below a small lesion the model barely sees; DSC, which an annotation
  should raise, is relative in the same way.
- One number, simple to read: the JSON keeps the volumes behind it (predicted and hesitant
  mL per case and class), so a high share of a tiny volume is visible as such.

Its blind spot: a structure the model misses with confidence (margins far below ``-BAND``)
is invisible to this and to any measure of the model's own uncertainty.

Volumes are counted on the model's grid (after resampling to its spacing) and inside the ROI
mask when the case has one (``masks<subset>``); a case without any candidate voxel scores 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .data import load_case, read_nnunet_dataset
from .errors import InputError
from .events import EventSink
from .files import case_inputs, check_writable_folder, refuse_overwriting_inputs, write_json
from .inference import check_overlap, class_margins, load_predictor, predict_case
from .runtime import versions

BAND = 2.0
"""Half-width of the band of margins around the decision boundary where the model hesitates (logit units)."""
RANKING_FORMAT, RANKING_VERSION = "asymseg-ranking", 1
MEASURE = (f"hesitant / candidate volume of the rare classes: voxels with rare-class margin |m| < {BAND:g} over "
           f"voxels with m > -{BAND:g} (m = the class's logit minus the largest other one)")


def hesitation(logits: np.ndarray, class_names: Sequence[str], rarity: Sequence[float], voxel_ml: float,
               mask: Optional[np.ndarray] = None, band: float = BAND) -> dict:
    """The score of one case from its logits (C, *spatial) (module docstring).

    Returns ``{"score", "predicted_ml", "hesitant_ml", "candidate_ml", "classes": {name: the same four}}``:
    per rare class, the volumes in mL of its predicted voxels (m > 0), hesitant voxels (|m| < band) and
    candidate voxels (m > -band), and their share hesitant / candidate; at the top, the rare classes pooled.
    Only voxels where ``mask`` is set count.
    """
    margins = class_margins(np.asarray(logits, np.float32))
    counts = {}  # rare class name -> voxels predicted, hesitant, candidate
    for c, name in enumerate(class_names):
        if rarity[c] > 0:
            m = margins[c] if mask is None else margins[c][np.asarray(mask, bool)]
            counts[name] = [int(np.count_nonzero(m > 0)), int(np.count_nonzero(np.abs(m) < band)),
                            int(np.count_nonzero(m > -band))]
    pooled = [sum(v[k] for v in counts.values()) for k in range(3)]
    return {**_volumes(*pooled, voxel_ml), "classes": {name: _volumes(*v, voxel_ml) for name, v in counts.items()}}


def _volumes(predicted: int, hesitant: int, candidate: int, voxel_ml: float) -> dict:
    """Voxel counts as volumes in mL, and their score (0 without a candidate voxel)."""
    return {"score": hesitant / candidate if candidate else 0.0, "predicted_ml": predicted * voxel_ml,
            "hesitant_ml": hesitant * voxel_ml, "candidate_ml": candidate * voxel_ml}


def ranking_table(cases: List[dict]) -> str:
    """The ranked cases as a plain-text table for the log."""
    width = max([len("case")] + [len(c["case"]) for c in cases])
    lines = [f"{'rank':>4}  {'case':<{width}}  {'score':>6}  {'predicted mL':>12}  {'hesitant mL':>11}"]
    lines += [f"{c['rank']:>4}  {c['case']:<{width}}  {c['score']:>6.3f}  {c['predicted_ml']:>12.2f}  "
              f"{c['hesitant_ml']:>11.2f}" for c in cases]
    return "\n".join(lines)


def rank_cases(model, dataset, case_ids: Sequence[str], out, subset: str = "Ts", overlap: float = 0.5,
               device: str = "auto", sink: Optional[EventSink] = None) -> Dict[str, str]:
    """``rank --model M --dataset D [--subset Ts|Tr] [--cases ...] --out FILE.json``.

    Segments every chosen case of ``images<subset>`` (labels are not read), scores it with
    :func:`hesitation` and writes ``out``: ``format``, ``version``, ``model``, ``dataset``,
    ``subset``, ``measure``, ``band``, ``rare_classes`` and ``cases`` (highest score first,
    then the larger hesitant volume): ``rank``, ``case``, ``score``, ``predicted_ml``,
    ``hesitant_ml``, ``candidate_ml``, ``classes``. Emits a ``progress`` event (phase ``rank``)
    per case and logs the table. Returns ``{"ranking": path}``.
    """
    sink = sink or EventSink(progress_bar=False)
    out = Path(out).expanduser().absolute()
    if out.is_dir():
        raise InputError(f"The ranking output {out} is a folder.", f"Give a file name, e.g. {out / 'ranking.json'}.")
    overlap = check_overlap(overlap)
    _, specs = read_nnunet_dataset(Path(dataset), subset)
    by_id = {spec.id: spec for spec in specs}
    unknown = [c for c in case_ids if c not in by_id]
    if unknown:
        raise InputError(f"Case(s) {unknown} are not in {dataset} (images{subset}).",
                         f"Available cases: {', '.join(sorted(by_id))}.")
    chosen = [by_id[c] for c in case_ids] if case_ids else specs
    refuse_overwriting_inputs([out], {"dataset folder (--dataset)": dataset, "--model": model,
                                      **case_inputs(chosen)})
    check_writable_folder(out.parent)
    predictor = load_predictor(model, device)
    names, rarity = predictor.class_names, predictor.meta["rarity"]
    rare = [name for name, r in zip(names, rarity) if r > 0]
    if not rare:
        raise InputError(f"The model {predictor.path} marks no class as rare: there is nothing to rank by.",
                         "Use a model trained with at least one rare class (rarity > 0).")
    sink.emit("start", command="rank", config={"model": str(predictor.path), "dataset": str(dataset), "subset": subset,
                                               "cases": [s.id for s in chosen], "out": str(out), "band": BAND,
                                               "overlap": overlap, "rare_classes": rare},
              device=str(predictor.device), versions=versions(), output=str(out))
    scored = []
    for i, spec in enumerate(chosen, 1):
        sink.emit("progress", phase="rank", iteration=i, total=len(chosen), case=spec.id)
        case = load_case(spec, None, predictor.normalization, predictor.meta.get("target_spacing"))
        logits = predict_case(predictor, case, overlap)
        scored.append({"case": spec.id, **hesitation(logits, names, rarity, float(np.prod(case.spacing)) / 1000.0,
                                                     case.mask)})
    scored.sort(key=lambda c: (-c["score"], -c["hesitant_ml"], c["case"]))
    cases = [{"rank": r, **c} for r, c in enumerate(scored, 1)]
    record = {"format": RANKING_FORMAT, "version": RANKING_VERSION, "model": str(predictor.path),
              "dataset": str(dataset), "subset": subset, "measure": MEASURE, "band": BAND, "rare_classes": rare,
              "cases": cases}
    path = write_json(out, record)
    sink.log(f"Cases ranked by how much the model hesitates about {', '.join(rare)} (annotate the first):\n"
             + ranking_table(cases))
    return {"ranking": str(path)}
