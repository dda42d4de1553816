"""``evaluate``: metrics of predicted label maps against ground truth, with and without post-processing.

METHOD.md §6: per case and per foreground class, DSC, sensitivity, precision, specificity,
HD95 (mm) and the lesion-wise counts, computed by :func:`AsymSegTrainer.metrics.case_metrics`
on three variants of the prediction (``VARIANTS``): as it is ("raw"), after the chosen
post-processing of each class ("chosen": the model's, chosen on its validation cases, or
``--postprocess``; :mod:`AsymSegTrainer.postprocessing`) and after keeping the largest
connected component of each foreground class ("post", the paper's; the name is kept so older
results read the same). Undefined values (empty masks) stay ``None`` and are counted, never
averaged as NaN.

Outputs of :func:`evaluate_folder` (also reused by ``infer`` and the demo):

- ``OUT/metrics.json``: ``{"postprocessing": {class: spec}, "cases": {case: {"raw" |
  "chosen" | "post": {class: metrics}}}, "summary": {variant: {class: {metric:
  summarize_metrics(...)}}}, ...}``: per-case means, and lesion totals over the cases;
- ``OUT/metrics.md``: per variant the per-case Markdown table with mean ± std and lesion
  totals, and lesion detection by size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .data import (SUPPORTED_EXTENSIONS, ClassMap, check_same_geometry, read_image,
                   read_nnunet_dataset, spacing_zyx)
from .errors import InputError
from .events import EventSink
from .files import case_inputs, check_writable_folder, refuse_overwriting_inputs, write_json, write_text
from .formatting import percent
from .locks import FolderLock
from .metrics import (VOXEL_KEYS, case_metrics, keep_largest_component, lesion_size_table_markdown, lesion_totals,
                      metrics_table_markdown, summarize_metrics)
from .postprocessing import apply_postprocessing, describe_postprocessing, resolve_postprocessing
from .runtime import versions

METRICS_FORMAT = "asymseg-metrics"
METRICS_VERSION = 1
SUMMARY_KEYS = VOXEL_KEYS
VARIANTS = {"raw": "Without post-processing", "chosen": "Chosen post-processing per class",
            "post": "Largest connected component per class (the paper's)"}
VARIANT_LABELS = {"raw": "raw", "chosen": "chosen on validation", "post": "largest component"}
"""Short names of the variants for table cells (the demo and bench, where "chosen" is always the model's)."""


# ---------------------------------------------------------------------------- building blocks

def raw_and_post(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float],
                 class_names: Sequence[str], postprocessing: Optional[Mapping[str, str]] = None
                 ) -> Dict[str, Dict[str, dict]]:
    """``{"raw" | "chosen" | "post": {class name: metrics}}`` of one case, foreground classes only.

    ``prediction`` and ``reference`` are class-index maps on one grid, ``spacing`` in array
    order (z, y, x) in mm; "chosen" applies ``postprocessing`` (class name -> spec; default
    none, the same as raw), "post" keeps the largest component of each foreground class of the
    prediction. A variant equal to an earlier one reuses its metrics (HD95 is the costly part).
    """
    classes = list(range(1, len(class_names)))
    arrays = {"raw": prediction, "chosen": apply_postprocessing(prediction, postprocessing or {}, class_names, spacing),
              "post": keep_largest_component(prediction, classes)}
    result, measured = {}, []
    for variant, array in arrays.items():
        metrics = next((m for earlier, m in measured if np.array_equal(earlier, array)), None)
        if metrics is None:
            metrics = case_metrics(array, reference, spacing, classes)
            measured.append((array, metrics))
        result[variant] = {class_names[c]: dict(metrics[c]) for c in classes}
    return result


def summarize_cases(cases: Dict[str, Dict[str, Dict[str, dict]]],
                    keys: Sequence[str] = SUMMARY_KEYS) -> Dict[str, Dict[str, Dict[str, dict]]]:
    """``{variant: {class: summarize_metrics(the class's metrics over the cases)}}`` of raw_and_post results.

    A case without a variant (a result from before it existed) is left out of that variant.
    """
    summary = {}
    for variant in VARIANTS:
        names = list(dict.fromkeys(name for case in cases.values() for name in case.get(variant, {})))
        summary[variant] = {name: summarize_metrics((case[variant][name] for case in cases.values()
                                                     if name in case.get(variant, {})), keys) for name in names}
    return summary


def postprocessing_words(postprocessing: Mapping[str, str]) -> str:
    """The chosen post-processing in words, class by class: ``"lesion: components smaller than 10 mm³ removed"``."""
    return "; ".join(f"{name}: {describe_postprocessing(spec)}" for name, spec in postprocessing.items())


def metrics_markdown(cases: Dict[str, Dict[str, Dict[str, dict]]], class_names: Sequence[str],
                     postprocessing: Optional[Mapping[str, str]] = None) -> str:
    """Per variant (raw, chosen, largest component) of raw_and_post results: the per-case table and lesions by size.

    ``postprocessing`` (class name -> spec) is what "chosen" applied; default none.
    """
    index = {name: i for i, name in enumerate(class_names)}
    names = dict(enumerate(class_names))
    chosen = postprocessing_words(postprocessing or resolve_postprocessing(None, class_names))
    sections = []
    for variant, title in VARIANTS.items():
        per_case = {case: {index[name]: m for name, m in result[variant].items()} for case, result in cases.items()}
        sections.append(f"## {title} ({variant})\n\n" + (f"{chosen}.\n\n" if variant == "chosen" else "")
                        + metrics_table_markdown(per_case, names) + "\nLesions by size, all cases:\n\n"
                        + lesion_size_table_markdown(per_case, names))
    return "\n".join(sections)


def metrics_paths(out) -> Dict[str, Path]:
    """The files write_metrics writes in ``out``: ``{"metrics": metrics.json, "metrics_markdown": metrics.md}``."""
    return {"metrics": Path(out) / "metrics.json", "metrics_markdown": Path(out) / "metrics.md"}


def write_metrics(out: Path, cases: Dict[str, Dict[str, Dict[str, dict]]], class_names: Sequence[str],
                  extra: Optional[dict] = None, postprocessing: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """``out/metrics.json`` and ``out/metrics.md`` of raw_and_post results; returns name -> path.

    ``postprocessing``: class name -> the spec the "chosen" variant applied (default none).
    """
    paths = metrics_paths(out)
    postprocessing = dict(postprocessing or resolve_postprocessing(None, class_names))
    record = {"format": METRICS_FORMAT, "version": METRICS_VERSION, "classes": list(class_names), **(extra or {}),
              "postprocessing": postprocessing, "cases": cases, "summary": summarize_cases(cases)}
    json_path = write_json(paths["metrics"], record)
    md_path = write_text(paths["metrics_markdown"], metrics_markdown(cases, class_names, postprocessing))
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
        try:
            return ClassMap.from_dict({"classes": meta["classes"], "unlisted": meta.get("unlisted", "error")})
        except (KeyError, TypeError, AttributeError) as exc:
            hint = "Use a model_best.pt / model_last.pt written by AsymSeg training, or give --classes."
            raise InputError(f"Model file {model} holds no class map ({type(exc).__name__}: {exc}).", hint) from exc
    if classes:
        return ClassMap.parse(list(classes))
    return ClassMap.from_nnunet_labels(labels)


def _postprocessing(requested: Optional[str], model: Optional[Path], names: Sequence[str]) -> Dict[str, str]:
    """Class name -> spec of the "chosen" variant: ``requested``, else the model's choice, else none."""
    meta = None
    if model and requested is None:
        from .network import load_model_file
        _, meta = load_model_file(Path(model))
    return resolve_postprocessing(requested, names, meta)


def _prediction_files(folder: Path, ending: str) -> Dict[str, Path]:
    """case id -> prediction file in ``folder``; the dataset's file ending wins over other formats."""
    if not folder.is_dir():
        raise InputError(f"Prediction folder {folder} does not exist or is not a folder.",
                         "Give the folder of <case>.nii.gz label maps (e.g. infer --dataset ... --out-dir).")
    endings = [ending] + [e for e in SUPPORTED_EXTENSIONS if e != ending]
    found: Dict[str, Path] = {}
    for ext in endings:
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.name.endswith(ext) and not path.name.startswith("."):
                found.setdefault(path.name[: -len(ext)], path)
    return found


def evaluate_folder(predictions, dataset, out, classes: Optional[List[str]] = None, model: Optional[Path] = None,
                    cases: Sequence[str] = (), sink: Optional[EventSink] = None,
                    allow_missing: bool = False, postprocess: Optional[str] = None) -> Dict[str, str]:
    """Evaluate ``predictions/<case><ending>`` against ``dataset/labelsTr``; write OUT/metrics.json and .md.

    The ground truth's raw label values are mapped to classes by ``classes`` (``NAME=v1,v2``
    strings), else by the class map of ``model``, else by dataset.json's labels. Predictions
    are class-index maps on the ground truth's grid. ``cases`` defaults to every case of the
    dataset (files not named after one, e.g. ``*_probabilities.nii.gz``, are skipped); a case
    without a prediction is an InputError naming it, unless ``allow_missing`` (then a warning
    names it, and metrics.json lists it under ``missing_cases``). OUT must not be or lie in an
    input, and is locked for the command's life (locks.FolderLock). The "chosen" variant
    applies ``postprocess`` (a spec for every class), else the post-processing ``model`` chose
    on its validation cases, else none; "raw" is the files as they are. Returns
    ``{"metrics": path, "metrics_markdown": path}``.
    """
    sink = sink or EventSink(progress_bar=False)
    predictions, dataset, out = Path(predictions), Path(dataset), Path(out)
    info, specs = read_nnunet_dataset(dataset)
    refuse_overwriting_inputs([out, *metrics_paths(out).values()],
                              {"dataset folder (--dataset)": dataset, "--model": model, **case_inputs(specs)})
    check_writable_folder(out)
    with FolderLock(out):
        sink.attach(out)
        class_map = _class_map(classes, model, info["labels"])
        return _evaluate(predictions, dataset, info, specs, out, class_map=class_map, cases=cases,
                         allow_missing=allow_missing, sink=sink,
                         postprocessing=_postprocessing(postprocess, model, class_map.names))


def _listing(names: Sequence[str]) -> str:
    """At most ten names for a message, ``"a, b, c ..."``."""
    return ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")


def _chosen_cases(requested: Sequence[str], case_ids: Sequence[str], files: Dict[str, Path], predictions: Path,
                  dataset: Path, ending: str, allow_missing: bool, sink: EventSink) -> Tuple[List[str], List[str]]:
    """(cases to evaluate, cases left out): ``requested`` or every dataset case, each with a prediction file.

    A case without one is an InputError naming it, unless ``allow_missing`` (a warning then names it).
    """
    unknown = [c for c in requested if c not in case_ids]
    if unknown:
        raise InputError(f"Case(s) {unknown} are not in {dataset}.", f"Available cases: {', '.join(sorted(case_ids))}.")
    wanted = list(requested) or list(case_ids)
    ids = [c for c in wanted if c in files]
    missing = [c for c in wanted if c not in files]
    skipped = sorted(set(files) - set(case_ids))
    if skipped:
        sink.log(f"Not cases of {dataset.name}, skipped: {_listing(skipped)}")
    if not ids and not requested:
        raise InputError(f"No file in {predictions} is named after a case of {dataset} "
                         f"(expected <case>{ending}, e.g. {wanted[0]}{ending}).",
                         "Name each prediction after its case, as infer --dataset does.")
    if missing and (not allow_missing or not ids):
        raise InputError(f"No prediction for case(s) {_listing(missing)} in {predictions} ({len(missing)} of "
                         f"{len(wanted)}; expected e.g. {predictions / (missing[0] + ending)}).",
                         "Run infer on these cases first, name the cases to evaluate with --cases, or give "
                         "--allow-missing to evaluate only the cases that have a prediction.")
    if missing:
        sink.warning(f"No prediction for case(s) {_listing(missing)} in {predictions}: the metrics average over "
                     f"the {len(ids)} of {len(wanted)} case(s) that have one.",
                     "Run infer on the missing cases to evaluate them all.")
    return ids, missing


def _evaluate(predictions: Path, dataset: Path, info: dict, specs: Sequence, out: Path, class_map: ClassMap,
              cases: Sequence[str], allow_missing: bool, sink: EventSink,
              postprocessing: Dict[str, str]) -> Dict[str, str]:
    """evaluate_folder's work once OUT is checked, locked and logged to (``postprocessing``: of "chosen")."""
    names = class_map.names
    by_id = {spec.id: spec for spec in specs}
    files = _prediction_files(predictions, info["file_ending"])
    ids, missing = _chosen_cases(cases, list(by_id), files, predictions, dataset, info["file_ending"], allow_missing,
                                 sink)
    sink.emit("start", command="evaluate", config={"predictions": str(predictions), "dataset": str(dataset),
                                                    "classes": class_map.to_dict()["classes"],
                                                    "unlisted": class_map.unlisted, "cases": ids,
                                                    "postprocessing": postprocessing},
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
        results[case] = raw_and_post(prediction, reference, spacing_zyx(reference_image), names, postprocessing)
    outputs = write_metrics(out, results, names, extra={"class_map": class_map.to_dict(),
                                                         "predictions": str(predictions), "dataset": str(dataset),
                                                         "missing_cases": missing},
                            postprocessing=postprocessing)
    sink.log(f"Means over {len(results)} case(s)" + (f"; {len(missing)} without a prediction left out" if missing
                                                       else ""))
    _log_summary(sink, summarize_cases(results))
    return outputs


def _log_summary(sink: EventSink, summary: dict) -> None:
    for variant in VARIANTS:
        for name, metrics in summary[variant].items():
            parts = [f"{key} {percent(metrics[key]['mean'])}" for key in ("dsc", "sensitivity", "precision")]
            found, _, false_positive, _ = lesion_totals(metrics)
            sink.log(f"{variant:>6} {name}: " + ", ".join(parts) + f"; lesions found {found}, false positive "
                     f"{false_positive}")
