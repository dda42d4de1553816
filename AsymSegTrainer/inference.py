"""``infer``: segment one case (what Slicer calls) or the cases of an nnU-Net folder with a model file.

For each case (docs/protocol.md, "infer outputs"):

1. the channels (and the optional ground truth / ROI mask) are read and checked to share one
   geometry, normalised as in training (the ROI mask, when given, selects the normalisation
   statistics as it does in training) and, when the model has a ``target_spacing``,
   resampled to it (linear);
2. logits come from MONAI sliding-window inference (Gaussian blending, ``overlap``);
3. resampled logits are brought back to the input geometry by LINEAR interpolation of the
   logits; the label map is the argmax of these logits and the probabilities their softmax.
   This is smoother than the nearest neighbour of a coarse argmax, keeps label map and
   probabilities consistent (label = argmax of probabilities), and lets the logit statistics
   be collected voxel for voxel with the input-grid ground truth;
4. outputs, beside ``FILE``, in the exact geometry (size, spacing, origin, direction) of the
   first channel and the format of ``FILE``'s extension:

   - ``FILE``: uint8 class indices (0 = background), post-processed per class as ``postprocess``
     says (``none``, ``largest``, ``min-size=V``), else as the model chose on its validation
     cases, else not at all (postprocessing.py);
   - ``<stem>_logits.json``: LogitStatistics of the case (input grid, inside the ROI mask when
     given), voxels grouped by the ground-truth class with ``label`` (``"grouped_by":
     "reference"``) else by the predicted class of the raw argmax (``"prediction"``);
   - ``<stem>_metrics.json`` (with ``label``): per-class voxel and lesion-wise metrics ``raw``,
     ``chosen`` (the post-processing of ``FILE``, named under ``postprocessing``) and ``post``
     (largest component), keyed by class name;
   - ``<stem>_probabilities.nii.gz`` (with ``probabilities``): softmax, one vector component
     per class, float32;
   - ``<stem>_margins.nii.gz`` (with ``probabilities``): per class, its logit minus the
     largest other one (0 = the decision boundary: where the model hesitates), one vector
     component per class, float32.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .data import (SUPPORTED_EXTENSIONS, CaseSpec, ClassMap, LoadedCase, Normalization, load_case, read_image,
                   read_nnunet_dataset, spacing_zyx, to_reference, write_image)
from .errors import InputError
from .calibration import adjust, offset_vector, parse_offsets, stored_offsets
from .evaluation import VARIANTS, label_array, raw_and_post
from .files import case_inputs, check_writable_folder, refuse_overwriting_inputs, write_json
from .formatting import percent
from .events import EventSink
from .locks import FolderLock
from .logits import LogitStatistics
from .network import build_network, load_model_file, load_weights
from .postprocessing import apply_postprocessing, resolve_postprocessing
from .prediction import predict_logits
from .runtime import resolve_device, versions

PROGRESS_INTERVAL_S = 1.0  # at most one progress event per second within a case


# ---------------------------------------------------------------------------- the model

@dataclass
class Predictor:
    """A loaded model file, ready to predict: the network on its device and the meta it needs."""

    path: Path
    meta: dict
    model: nn.Module
    device: torch.device
    class_map: ClassMap
    normalization: Normalization

    @property
    def class_names(self) -> List[str]:
        return list(self.class_map.names)

    @property
    def channels(self) -> List[str]:
        return list(self.meta["channels"])


def load_predictor(model: Union[str, Path, Predictor], device: str = "auto") -> Predictor:
    """Read a model file (InputError when missing, corrupt or not AsymSeg's) and build its network."""
    if isinstance(model, Predictor):
        return model
    path = Path(model)
    state, meta = load_model_file(path)
    hint = "Use a model_best.pt / model_last.pt written by AsymSeg training."
    try:
        class_map = ClassMap.from_dict({"classes": meta["classes"], "unlisted": meta.get("unlisted", "error")})
        normalization = Normalization.from_dict(meta.get("normalization") or {})
        network = build_network(meta["network"], len(meta["channels"]), class_map.num_classes, meta["spatial_dims"])
        unfit = load_weights(network, state["state_dict"])
        _ = [int(p) for p in meta["patch_size"]]
    except InputError as exc:
        raise InputError(f"Model file {path} is inconsistent: {exc.message}", hint) from exc
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"Model file {path} is incomplete or inconsistent: {type(exc).__name__}: {exc}", hint) from exc
    if unfit:
        raise InputError(f"Model file {path}: the weights do not fit the network described in the file "
                         f"({', '.join(unfit[:3])} ...).", hint)
    torch_device = resolve_device(device)
    network.to(torch_device).eval()
    return Predictor(path, meta, network, torch_device, class_map, normalization)


def resolve_offsets(predictor: Predictor, logit_offsets: Sequence[str] = (),
                    calibrated: bool = False) -> Optional[Dict[str, float]]:
    """The logit offsets of an inference: the model's calibrated ones (``calibrated``), overridden class by class by
    ``--logit-offset NAME=VALUE`` strings; None when there are none."""
    offsets = stored_offsets(predictor.meta, predictor.path) if calibrated else {}
    offsets.update(parse_offsets(logit_offsets, predictor.class_names))
    return offsets or None


def _model_path(model: Union[str, Path, Predictor]) -> Path:
    """The file of a model given as a path or as a loaded Predictor."""
    return model.path if isinstance(model, Predictor) else Path(model)


def _check_channels(predictor: Predictor, images: Sequence) -> None:
    channels = predictor.channels
    if len(images) != len(channels):
        raise InputError(f"The model takes {len(channels)} channel(s) {channels} but {len(images)} image(s) were "
                         f"given: {', '.join(str(p) for p in images)}.",
                         f"Give one image per channel, in this order: {', '.join(channels)}.")


# ---------------------------------------------------------------------------- outputs

def output_paths(out) -> Dict[str, Path]:
    """The files of one case's outputs: prediction FILE and its ``<stem>_*`` companions."""
    if out is None:
        raise InputError("No output file: infer --images needs --out FILE.", "E.g. --out prediction.nii.gz.")
    path = Path(out).expanduser().absolute()
    ext = next((e for e in SUPPORTED_EXTENSIONS if path.name.lower().endswith(e)), None)
    if ext is None or len(path.name) == len(ext):
        raise InputError(f"Output file {path} has an unsupported extension.",
                         f"Use one of {', '.join(SUPPORTED_EXTENSIONS)}, e.g. prediction.nii.gz.")
    if path.is_dir():
        raise InputError(f"Output file {path} is a folder.", f"Give a file name, e.g. {path / f'prediction{ext}'}.")
    stem = path.name[: -len(ext)]
    return {"prediction": path, "logits": path.with_name(f"{stem}_logits.json"),
            "metrics": path.with_name(f"{stem}_metrics.json"),
            "probabilities": path.with_name(f"{stem}_probabilities.nii.gz"),
            "margins": path.with_name(f"{stem}_margins.nii.gz")}


def check_overlap(overlap) -> float:
    """The sliding-window overlap as a float; InputError unless it is a fraction in [0, 1)."""
    try:
        value = float(overlap)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 <= value < 1.0:
        raise InputError(f"overlap must be a fraction in [0, 1); got {overlap!r}.", "0.5 is the usual choice.")
    return value


# ---------------------------------------------------------------------------- prediction

def _windows(shape: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """Number of sliding windows MONAI visits over an image of ``shape`` (its scan-interval rule)."""
    count = 1
    for size, r in zip(shape, roi):
        if size <= r:
            continue
        interval = max(int(r * (1 - overlap)), 1)
        count *= math.ceil((size - r) / interval) + 1
    return count


class _Counting(nn.Module):
    """Calls the network and reports how many windows went through it (for progress events)."""

    def __init__(self, network: nn.Module, report: Callable[[int], None]):
        super().__init__()
        self.network = network
        self.report = report

    def forward(self, x):
        out = self.network(x)
        self.report(int(x.shape[0]))
        return out


def predict_case(predictor: Predictor, case: LoadedCase, overlap: float = 0.5,
                 progress: Optional[Callable[[float], None]] = None) -> np.ndarray:
    """Logits (C, z, y, x) float32 of a loaded case on its array grid.

    A 2D model (``spatial_dims`` 2) segments a 3D volume slice by slice. ``progress`` is
    called with the fraction of windows done.
    """
    meta = predictor.meta
    patch = [int(p) for p in meta["patch_size"]]
    spatial_dims = int(meta["spatial_dims"])
    depth = case.image.shape[1]
    slices = [slice(z, z + 1) for z in range(depth)] if spatial_dims == 2 else [slice(None)]
    roi = patch[-2:] if spatial_dims == 2 else patch
    shape = case.image.shape[-2:] if spatial_dims == 2 else case.image.shape[1:]
    total = max(1, _windows(shape, roi, overlap) * len(slices))
    done = [0]

    def report(n: int) -> None:
        done[0] += n
        if progress:
            progress(min(1.0, done[0] / total))

    counting = _Counting(predictor.model, report)
    amp = predictor.device.type == "cuda"
    parts = [predict_logits(counting, case.image[:, s], patch, predictor.device, spatial_dims, overlap, amp)
             for s in slices]
    logits = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    return logits.numpy()


def _input_grid_array(path) -> np.ndarray:
    return label_array(read_image(path))


def _softmax(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(logits), dim=0).numpy()


def class_margins(logits: np.ndarray) -> np.ndarray:
    """Per class c, ``z_c - max_{k != c} z_k`` (C, ...) float32: > 0 where c is predicted, near 0 where the model
    hesitates between c and another class (the distance to the decision boundary in logit units)."""
    top2 = np.sort(logits, axis=0)[-2:]  # second largest and largest logit of every voxel
    best_other = np.where(logits == top2[1], top2[0], top2[1])
    return (logits - best_other).astype(np.float32)


def infer_spec(predictor: Predictor, spec: CaseSpec, out, overlap: float = 0.5, postprocess: Optional[str] = None,
               probabilities: bool = False, sink: Optional[EventSink] = None, index: int = 1,
               total: int = 1, offsets: Optional[Dict[str, float]] = None) -> Dict[str, str]:
    """Segment one case (``spec``: images, optional label and mask) and write its outputs beside ``out``.

    The building block of infer_case and infer_cases; emits ``load`` and
    ``infer`` progress events (``iteration`` = ``index`` of ``total`` cases, plus
    ``fraction`` of the case's windows done). ``postprocess``: a spec for every class, else the
    model's choice, else none (postprocessing.resolve_postprocessing). ``offsets``: class name ->
    logit offset added before the arg-max and the softmax (calibration.py); the logit statistics
    describe the network's own logits. Returns output name -> path.
    A ``<stem>_metrics.json``, ``_probabilities.nii.gz`` or ``_margins.nii.gz`` left beside
    ``out`` by an earlier run and not written by this one is removed, and ``out`` itself is written last (an earlier one
    is removed first), so the files beside ``out`` always belong together and a run that fails
    part-way leaves no prediction.
    """
    sink = sink or EventSink(progress_bar=False)
    paths = output_paths(out)
    overlap = check_overlap(overlap)
    _check_channels(predictor, spec.images)
    names = predictor.class_names
    postprocessing = resolve_postprocessing(postprocess, names, predictor.meta)
    sink.emit("progress", phase="load", iteration=index, total=total, case=spec.id)
    case = load_case(spec, predictor.class_map if spec.label else None, predictor.normalization,
                     predictor.meta.get("target_spacing"))
    resampled = case.grid is not case.reference
    if resampled:
        sink.log(f"{spec.id}: predicting on the model's {tuple(case.spacing)} mm grid "
                 f"{case.image.shape[1:]} (input {tuple(spacing_zyx(case.reference))} mm)")

    last = [0.0]

    def progress(fraction: float) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_INTERVAL_S or fraction >= 1.0:
            last[0] = now
            sink.emit("progress", phase="infer", iteration=index, total=total, case=spec.id, fraction=round(fraction, 4))

    progress(0.0)
    logits = predict_case(predictor, case, overlap, progress)
    logits = to_reference(logits, case.grid, case.reference, nearest=False).astype(np.float32, copy=False)
    label = mask = None
    if spec.label:
        label = _input_grid_array(spec.label) if resampled else case.label
        if resampled:
            label = predictor.class_map.lookup(label, source=spec.label)
    if spec.mask:
        mask = (_input_grid_array(spec.mask) != 0) if resampled else case.mask

    adjusted = adjust(logits, offset_vector(offsets, names))
    raw = np.argmax(adjusted, axis=0).astype(np.uint8)
    written = apply_postprocessing(raw, postprocessing, names, spacing_zyx(case.reference))

    grouped_by = "reference" if label is not None else "prediction"
    stats = LogitStatistics(names, metadata={"grouped_by": grouped_by, "case": spec.id, "model": str(predictor.path),
                                             "images": [str(p) for p in spec.images], "label": spec.label,
                                             "mask": spec.mask, "resampled": resampled,
                                             "logit_offsets": offsets or None})
    stats.update(logits, label if label is not None else raw, mask,
                 voxel_volume_ml=float(np.prod(spacing_zyx(case.reference))) / 1000.0)
    paths["prediction"].unlink(missing_ok=True)  # an earlier run's: the prediction is written last, see below
    outputs = {"logits": str(write_json(paths["logits"], {**stats.to_dict(), "grouped_by": grouped_by}))}

    if label is not None:
        metrics = raw_and_post(raw, label, spacing_zyx(case.reference), names, postprocessing)
        record = {"case": spec.id, "classes": names, "postprocessing": postprocessing, "written": "chosen",
                  "logit_offsets": offsets or None, **metrics}
        outputs["metrics"] = str(write_json(paths["metrics"], record))
        for variant in VARIANTS:
            sink.log(f"{spec.id} {variant}: " + "; ".join(
                f"{name} DSC {percent(m['dsc'])} SEN {percent(m['sensitivity'])} PRC {percent(m['precision'])}, "
                f"lesions found {m['lesions_detected']}/{m['lesions_reference']} FP {m['lesions_false_positive']}"
                for name, m in metrics[variant].items()))
    if probabilities:
        outputs["probabilities"] = str(write_image(_softmax(adjusted), case.reference, paths["probabilities"]))
        outputs["margins"] = str(write_image(class_margins(adjusted), case.reference, paths["margins"]))
    for name in ("metrics", "probabilities", "margins"):  # a companion of an earlier run would pass for this run's
        if name not in outputs and paths[name].is_file():
            paths[name].unlink()
    # Last, so that a run failing part-way leaves no prediction of this case: a prediction file on disk
    # always comes with this run's companions (and evaluate only picks up predictions).
    outputs["prediction"] = str(write_image(written, case.reference, paths["prediction"]))
    return outputs


def _config(predictor: Predictor, **settings) -> dict:
    meta = predictor.meta
    return {**{k: (str(v) if isinstance(v, Path) else v) for k, v in settings.items()}, "model": str(predictor.path),
            "classes": meta["classes"], "class_names": predictor.class_names, "channels": predictor.channels,
            "target_spacing": meta.get("target_spacing"), "patch_size": meta.get("patch_size"),
            "spatial_dims": meta.get("spatial_dims"), "technique": meta.get("technique"),
            "calibration": meta.get("calibration")}


# ---------------------------------------------------------------------------- public entry points

def infer_case(model, images: Sequence, out, label=None, mask=None, overlap: float = 0.5, device: str = "auto",
               postprocess: Optional[str] = None, probabilities: bool = False,
               sink: Optional[EventSink] = None, logit_offsets: Sequence[str] = (),
               calibrated: bool = False) -> Dict[str, str]:
    """``infer --model M --images CH0 [CH1 ...] --out FILE``: one case; returns output name -> path.

    Outputs: ``prediction`` (FILE), ``logits``, with ``label`` ``metrics``, with
    ``probabilities`` ``probabilities`` (docs/protocol.md, "infer outputs"). ``postprocess``
    (``--postprocess``): a spec for every class; default the model's choice, else none.
    ``logit_offsets`` (``--logit-offset NAME=VALUE`` strings) and ``calibrated`` (the offsets
    stored by ``calibrate``): :func:`resolve_offsets`.
    """
    sink = sink or EventSink(progress_bar=False)
    if not images:
        raise InputError("No input images.", "Give one image per channel with --images.")
    paths = output_paths(out)
    overlap = check_overlap(overlap)
    refuse_overwriting_inputs(paths.values(), {**{f"image {c} (--images)": p for c, p in enumerate(images)},
                                               "--label": label, "--mask": mask, "--model": _model_path(model)})
    check_writable_folder(paths["prediction"].parent)
    predictor = load_predictor(model, device)
    offsets = resolve_offsets(predictor, logit_offsets, calibrated)
    config = _config(predictor, images=[str(p) for p in images], label=label, mask=mask, out=paths["prediction"],
                     overlap=overlap, device=device, probabilities=probabilities, logit_offsets=offsets,
                     postprocessing=resolve_postprocessing(postprocess, predictor.class_names, predictor.meta))
    sink.emit("start", command="infer", config=config, device=str(predictor.device), versions=versions(),
              output=str(paths["prediction"]))
    stem = paths["logits"].name[: -len("_logits.json")]
    spec = CaseSpec(id=stem, images=[str(p) for p in images], label=str(label) if label else None,
                    mask=str(mask) if mask else None, role="test")
    return infer_spec(predictor, spec, paths["prediction"], overlap, postprocess, probabilities, sink,
                      offsets=offsets)


@dataclass
class CaseSet:
    """Several cases segmented by one model (:func:`infer_cases`)."""

    outputs: Dict[str, Dict[str, str]]
    """case id -> output name -> path, as :func:`infer_spec` returns them."""
    logits: LogitStatistics
    """The cases' logit statistics merged (metadata: ``grouped_by``, ``cases`` and the caller's)."""
    metrics: Dict[str, Dict[str, Dict[str, dict]]]
    """case id -> ``{"raw" | "chosen" | "post": {class name: metrics}}``, for the cases with ground truth."""
    postprocessing: Dict[str, str]
    """class name -> the post-processing of the written label maps (the "chosen" variant)."""


def infer_cases(predictor: Predictor, specs: Sequence[CaseSpec], out_dir, file_ending: str = ".nii.gz",
                overlap: float = 0.5, postprocess: Optional[str] = None, probabilities: bool = False,
                sink: Optional[EventSink] = None, metadata: Optional[dict] = None,
                offsets: Optional[Dict[str, float]] = None) -> CaseSet:
    """Segment several cases into ``out_dir/<case><file_ending>`` (+ companions) and pool what they measured.

    The one path from a model and a set of cases to their merged logit statistics and metrics:
    ``infer --dataset``, and the demo and bench for the training and the unseen cases (the
    same model on the same input grid, so the two sides compare voxel for voxel). The merged
    statistics are grouped by the reference when every case has one, by the prediction when
    none has (else "mixed"); ``metadata`` is added to theirs. ``postprocess`` as for
    infer_spec, and ``offsets``. ValueError for no cases.
    """
    outputs = {spec.id: infer_spec(predictor, spec, Path(out_dir) / f"{spec.id}{file_ending}", overlap,
                                   postprocess, probabilities, sink, i, len(specs), offsets)
               for i, spec in enumerate(specs, 1)}
    labelled = [bool(spec.label) for spec in specs]
    grouped_by = "reference" if all(labelled) else "prediction" if not any(labelled) else "mixed"
    logits = None
    for files in outputs.values():
        stats = LogitStatistics.load(files["logits"])
        if logits is None:
            logits = LogitStatistics(stats.class_names, stats.channel_names, stats.bin_edges,
                                     {"grouped_by": grouped_by, "cases": list(outputs), **(metadata or {})})
        logits.merge(stats)
    if logits is None:
        raise ValueError("no logit statistics to merge")
    metrics = {}
    for case, files in outputs.items():
        if "metrics" in files:
            record = json.loads(Path(files["metrics"]).read_text(encoding="utf-8"))
            metrics[case] = {variant: record[variant] for variant in VARIANTS}
    return CaseSet(outputs, logits, metrics, resolve_postprocessing(postprocess, predictor.class_names, predictor.meta))


def infer_dataset(model, dataset, case_ids: Sequence[str], out_dir, overlap: float = 0.5, device: str = "auto",
                  postprocess: Optional[str] = None, probabilities: bool = False,
                  sink: Optional[EventSink] = None, subset: str = "Tr", logit_offsets: Sequence[str] = (),
                  calibrated: bool = False) -> Dict[str, str]:
    """``infer --dataset DIR --out-dir OUT [--cases ...] [--subset Ts]``: cases of an nnU-Net v2 raw folder.

    Every case of images<subset> gets the outputs of infer_case in OUT (``<case><file_ending>``,
    ...), with its ground truth from labels<subset> when there is one (metrics, logits grouped
    by the reference) and its mask from masks<subset> when present. OUT also gets
    ``logit_statistics.json`` (all cases merged; grouped by the reference only when every case
    has one) and, for the cases with ground truth, ``metrics.json`` / ``metrics.md``
    (evaluation.write_metrics). Returns name -> path, with ``<case>``, ``<case>_logits``,
    ``<case>_metrics``, ``<case>_probabilities``, ``<case>_margins`` per case. No output may be or
    lie inside an input; OUT is locked for the command's life (locks.FolderLock) and the merged files of an earlier
    run are removed before the first case. ``logit_offsets``, ``calibrated``: as for infer_case.
    """
    from .evaluation import metrics_paths, write_metrics

    sink = sink or EventSink(progress_bar=False)
    if out_dir is None:
        raise InputError("No output folder: infer --dataset needs --out-dir DIR.", "E.g. --out-dir predictions.")
    out_dir = Path(out_dir).expanduser().absolute()
    overlap = check_overlap(overlap)
    info, specs = read_nnunet_dataset(Path(dataset), subset)
    by_id = {spec.id: spec for spec in specs}
    unknown = [c for c in case_ids if c not in by_id]
    if unknown:
        raise InputError(f"Case(s) {unknown} are not in {dataset}.", f"Available cases: {', '.join(sorted(by_id))}.")
    chosen = [by_id[c] for c in case_ids] if case_ids else specs
    merged = {"logit_statistics": out_dir / "logit_statistics.json", **metrics_paths(out_dir)}
    refuse_overwriting_inputs(
        [out_dir, *merged.values(), *(path for spec in chosen for path in output_paths(
            out_dir / f"{spec.id}{info['file_ending']}").values())],
        {"dataset folder (--dataset)": dataset, "--model": _model_path(model), **case_inputs(chosen)})
    check_writable_folder(out_dir)
    with FolderLock(out_dir):
        sink.attach(out_dir)
        for path in merged.values():  # an earlier run's would pass for this run's if this one failed part-way
            path.unlink(missing_ok=True)
        predictor = load_predictor(model, device)
        offsets = resolve_offsets(predictor, logit_offsets, calibrated)
        config = _config(predictor, dataset=str(dataset), cases=[s.id for s in chosen], out_dir=out_dir,
                         overlap=overlap, device=device, probabilities=probabilities, logit_offsets=offsets,
                         postprocessing=resolve_postprocessing(postprocess, predictor.class_names, predictor.meta))
        sink.emit("start", command="infer", config=config, device=str(predictor.device), versions=versions(),
                  output=str(out_dir))
        cases = infer_cases(predictor, chosen, out_dir, info["file_ending"], overlap, postprocess,
                            probabilities, sink, {"model": str(predictor.path)}, offsets)
        outputs = {}
        for case, files in cases.outputs.items():
            for name, path in files.items():
                outputs[case if name == "prediction" else f"{case}_{name}"] = path
        outputs["logit_statistics"] = str(write_json(merged["logit_statistics"],
                                                     {**cases.logits.to_dict(),
                                                      "grouped_by": cases.logits.metadata["grouped_by"]}))
        if cases.metrics:
            outputs.update(write_metrics(out_dir, cases.metrics, predictor.class_names,
                                         extra={"model": str(predictor.path), "dataset": str(dataset)},
                                         postprocessing=cases.postprocessing))
        return outputs
