"""``evaluate``: metrics of predicted label maps against ground truth, with and without post-processing.

METHOD.md §6: per case and per foreground class, DSC, sensitivity, precision, specificity
and HD95 (mm), computed by :func:`AsymSegTrainer.metrics.case_metrics` on the prediction as
it is ("raw") and after keeping the largest connected component of each foreground class
("post", :func:`~AsymSegTrainer.metrics.keep_largest_component`). Undefined values (empty
masks) stay ``None`` and are counted, never averaged as NaN.

Outputs of :func:`evaluate_folder` (also reused by ``infer`` and the demo):

- ``OUT/metrics.json``: ``{"cases": {case: {"raw": {class: metrics}, "post": {...}}},
  "summary": {"raw" | "post": {class: {metric: summarize(...)}}}, ...}``
- ``OUT/metrics.md``: the per-case Markdown tables (raw and post-processed) with mean ± std.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from .data import (SUPPORTED_EXTENSIONS, ClassMap, check_same_geometry, read_image,
                   read_nnunet_dataset, spacing_zyx)
from .errors import InputError
from .events import EventSink
from .files import check_writable_folder, write_json, write_text
from .formatting import percent
from .metrics import case_metrics, keep_largest_component, metrics_table_markdown, summarize
from .runtime import versions

METRICS_FORMAT = "asymseg-metrics"
METRICS_VERSION = 1
SUMMARY_KEYS = ("dsc", "sensitivity", "precision", "specificity", "hd95")
VARIANTS = {"raw": "Without post-processing", "post": "Largest connected component per class"}


# ---------------------------------------------------------------------------- building blocks

def raw_and_post(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float],
                 class_names: Sequence[str]) -> Dict[str, Dict[str, dict]]:
    """``{"raw": {class name: metrics}, "post": {...}}`` of one case, foreground classes only.

    ``prediction`` and ``reference`` are class-index maps on one grid, ``spacing`` in array
    order (z, y, x) in mm; "post" keeps the largest component of each foreground class of the
    prediction.
    """
    classes = list(range(1, len(class_names)))
    raw = case_metrics(prediction, reference, spacing, classes)
    post = case_metrics(keep_largest_component(prediction, classes), reference, spacing, classes)
    return {"raw": {class_names[c]: raw[c] for c in classes}, "post": {class_names[c]: post[c] for c in classes}}


def summarize_cases(cases: Dict[str, Dict[str, Dict[str, dict]]],
                    keys: Sequence[str] = SUMMARY_KEYS) -> Dict[str, Dict[str, Dict[str, dict]]]:
    """``{"raw" | "post": {class: {metric: summarize(values over the cases)}}}`` of raw_and_post results."""
    summary = {}
    for variant in VARIANTS:
        names = list(dict.fromkeys(name for case in cases.values() for name in case.get(variant, {})))
        summary[variant] = {name: {key: summarize(case[variant][name][key] for case in cases.values()
                                                  if name in case.get(variant, {}))
                                   for key in keys} for name in names}
    return summary


def metrics_markdown(cases: Dict[str, Dict[str, Dict[str, dict]]], class_names: Sequence[str]) -> str:
    """Two Markdown tables (raw, then post-processed) of raw_and_post results, one row per case and class."""
    index = {name: i for i, name in enumerate(class_names)}
    sections = []
    for variant, title in VARIANTS.items():
        per_case = {case: {index[name]: m for name, m in result[variant].items()} for case, result in cases.items()}
        sections.append(f"## {title} ({variant})\n\n" + metrics_table_markdown(per_case, dict(enumerate(class_names))))
    return "\n".join(sections)


def write_metrics(out: Path, cases: Dict[str, Dict[str, Dict[str, dict]]], class_names: Sequence[str],
                  extra: Optional[dict] = None) -> Dict[str, str]:
    """``out/metrics.json`` and ``out/metrics.md`` of raw_and_post results; returns name -> path."""
    out = Path(out)
    record = {"format": METRICS_FORMAT, "version": METRICS_VERSION, "classes": list(class_names), **(extra or {}),
              "cases": cases, "summary": summarize_cases(cases)}
    json_path = write_json(out / "metrics.json", record)
    md_path = write_text(out / "metrics.md", metrics_markdown(cases, class_names))
    return {"metrics": str(json_path), "metrics_markdown": str(md_path)}


def label_array(image: sitk.Image) -> np.ndarray:
    """The voxels of a 2D/3D image as a (z, y, x) array (z = 1 for 2D)."""
    array = sitk.GetArrayFromImage(image)
    return array[None] if image.GetDimension() == 2 else array


def class_indices(array: np.ndarray, num_classes: int, path) -> np.ndarray:
    """A predicted label map as uint8 class indices; InputError naming the file for anything else."""
    hint = "Give label maps of class indices (0 = background, 1 .. N-1 the classes), e.g. written by `infer`."
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise InputError(f"Prediction {path} holds non-integer values.", hint)
    elif array.dtype.kind not in "iub":
        raise InputError(f"Prediction {path} has voxel type {array.dtype}; expected integers.", hint)
    bad = (array < 0) | (array >= num_classes)
    if bad.any():
        values = np.unique(array[bad])[:10].tolist()
        raise InputError(f"Prediction {path} holds values {values} outside the class indices 0..{num_classes - 1}.",
                         hint)
    return array.astype(np.uint8)


# ---------------------------------------------------------------------------- evaluate

def _class_map(classes: Optional[List[str]], model: Optional[Path], labels: dict) -> ClassMap:
    if classes and model:
        raise InputError("Give either --classes or --model for the class map, not both.",
                         "--model takes the class map the model was trained with.")
    if model:
        from .network import load_model_file
        _, meta = load_model_file(Path(model))
        return ClassMap.from_dict({"classes": meta["classes"], "unlisted": meta.get("unlisted", "error")})
    if classes:
        return ClassMap.parse(list(classes))
    return ClassMap.from_nnunet_labels(labels)


def _prediction_files(folder: Path, ending: str) -> Dict[str, Path]:
    """case id -> prediction file in ``folder``; the dataset's file ending wins over other formats."""
    if not folder.is_dir():
        raise InputError(f"Prediction folder {folder} does not exist.",
                         "Give the folder of <case>.nii.gz label maps (e.g. infer --dataset ... --out-dir).")
    endings = [ending] + [e for e in SUPPORTED_EXTENSIONS if e != ending]
    found: Dict[str, Path] = {}
    for ext in endings:
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.name.endswith(ext) and not path.name.startswith("."):
                found.setdefault(path.name[: -len(ext)], path)
    return found


def evaluate_folder(predictions, dataset, out, classes: Optional[List[str]] = None, model: Optional[Path] = None,
                    cases: Sequence[str] = (), sink: Optional[EventSink] = None) -> Dict[str, str]:
    """Evaluate ``predictions/<case><ending>`` against ``dataset/labelsTr``; write OUT/metrics.json and .md.

    The ground truth's raw label values are mapped to classes by ``classes`` (``NAME=v1,v2``
    strings), else by the class map of ``model``, else by dataset.json's labels. Predictions
    are class-index maps on the ground truth's grid. ``cases`` defaults to every prediction
    named after a dataset case (other files, e.g. ``*_probabilities.nii.gz``, are skipped).
    Returns ``{"metrics": path, "metrics_markdown": path}``.
    """
    sink = sink or EventSink(progress_bar=False)
    predictions, dataset, out = Path(predictions), Path(dataset), Path(out)
    check_writable_folder(out)
    sink.attach(out)
    info, specs = read_nnunet_dataset(dataset)
    class_map = _class_map(classes, model, info["labels"])
    names = class_map.names
    by_id = {spec.id: spec for spec in specs}
    files = _prediction_files(predictions, info["file_ending"])
    if cases:
        unknown = [c for c in cases if c not in by_id]
        if unknown:
            raise InputError(f"Case(s) {unknown} are not in {dataset}.", f"Available cases: {', '.join(sorted(by_id))}.")
        missing = [c for c in cases if c not in files]
        if missing:
            raise InputError(f"No prediction for case(s) {missing} in {predictions} "
                             f"(expected e.g. {predictions / (missing[0] + info['file_ending'])}).",
                             "Run infer on these cases first, or leave them out of --cases.")
        ids = list(cases)
    else:
        ids = [c for c in files if c in by_id]
        skipped = sorted(set(files) - set(ids))
        if not ids:
            raise InputError(f"No file in {predictions} is named after a case of {dataset} "
                             f"(expected <case>{info['file_ending']}, e.g. {next(iter(by_id))}{info['file_ending']}).",
                             "Name each prediction after its case, as infer --dataset does.")
        if skipped:
            sink.log(f"Not cases of {dataset.name}, skipped: {', '.join(skipped[:10])}" + (" ..." if len(skipped) > 10 else ""))
    sink.emit("start", command="evaluate", config={"predictions": str(predictions), "dataset": str(dataset),
                                                    "classes": class_map.to_dict()["classes"],
                                                    "unlisted": class_map.unlisted, "cases": ids},
              device="cpu", versions=versions(), output=str(out))
    results = {}
    for i, case in enumerate(ids, 1):
        sink.emit("progress", phase="evaluate", iteration=i, total=len(ids), case=case)
        label_path, prediction_path = Path(by_id[case].label), files[case]
        reference_image, prediction_image = read_image(label_path), read_image(prediction_path)
        check_same_geometry(reference_image, label_path, prediction_image, prediction_path)
        if prediction_image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(f"Prediction {prediction_path} has {prediction_image.GetNumberOfComponentsPerPixel()} "
                             f"components per voxel; expected a label map.", "Give label maps of class indices.")
        reference = class_map.lookup(label_array(reference_image), source=label_path)
        prediction = class_indices(label_array(prediction_image), len(names), prediction_path)
        results[case] = raw_and_post(prediction, reference, spacing_zyx(reference_image), names)
    outputs = write_metrics(out, results, names, extra={"class_map": class_map.to_dict(),
                                                         "predictions": str(predictions), "dataset": str(dataset)})
    _log_summary(sink, summarize_cases(results))
    return outputs


def _log_summary(sink: EventSink, summary: dict) -> None:
    for variant in VARIANTS:
        for name, metrics in summary[variant].items():
            parts = [f"{key} {percent(metrics[key]['mean'])}" for key in ("dsc", "sensitivity", "precision")]
            sink.log(f"{variant:>4} {name}: " + ", ".join(parts))
