"""A training plan from the data and the device: settings a clinician-researcher should not have to guess.

nnU-Net's lesson is that settings derived from a dataset fingerprint beat hand-set defaults.
This is the same idea for fine-tuning on a few local cases within a time budget:

1. :func:`fingerprint` of the training cases: spacings, sizes, the extent of the body/ROI,
   per-channel intensity statistics and the modality they suggest, and per class the volume,
   the size of its largest connected component and the imbalance.
2. :func:`device_profile`: CPU cores or GPU memory.
3. :func:`make_plan`: each setting the job leaves out, with the reason for the choice:

   - ``patch_size``: what the device trains in reasonable time (CPU 32³ voxels, more on a GPU
     with more memory), cut to the size of the region of interest;
   - ``target_spacing``: coarser than the images' own only as far as needed for a patch to see
     about 64 mm of context (or 1.5 times the rare structure), and never so coarse that the
     smallest rare structure spans fewer than ``MIN_STRUCTURE_VOXELS`` voxels across;
   - ``batch_size``, ``network``: from the patch and the device;
   - ``normalization``: z-score per channel over the estimated foreground (MR) or a window
     from the foreground's intensity percentiles (CT, as nnU-Net), identical with or without
     an ROI mask so inference from image files alone matches training;
   - ``learning_rate``: 1e-3 for Adam/RMSProp (1e-2 for SGD) from scratch, 0.3 times that when
     fine-tuning from a model;
   - ``iterations``: what fits ``time_budget_minutes`` at the step time measured on this
     device (:func:`measure_step_seconds`), and ``validation_interval`` about 12 validations
     per run.

A setting the job gives is kept (source ``user``). The plan is a JSON-able dict (protocol.json,
event ``plan``).
"""

from __future__ import annotations

import math
import os
import platform
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from .data import CaseSpec, ClassMap, Normalization, estimated_foreground, load_case
from .jobspec import NATIVE
from .metrics import connected_components, dice
from .bundles import load_initial_model
from .network import downsampling_factor, network_config

PLAN_FORMAT, PLAN_VERSION = "asymseg-plan", 1

MIN_CONTEXT_MM = 64.0  # a patch should see about this much around a structure (a BRATS tumour core is ~45 mm)
CONTEXT_PER_STRUCTURE = 1.5  # ... or 1.5 times the rare structure's diameter, if larger
CONTEXT_SHORTFALL = 0.75  # a patch covering 75% of the wanted context is enough: no resampling for less
MIN_STRUCTURE_VOXELS = 8.0  # the smallest rare structure must span at least this many voxels across
SPACING_FACTORS = (1.0, 1.5, 2.0, 3.0, 4.0)  # coarser spacings tried, in multiples of the finest native one
CPU_PATCH, CPU_PATCH_MANY_CORES, MANY_CORES = 32, 48, 8
GPU_PATCHES = ((40.0, 128), (16.0, 96), (8.0, 64), (0.0, 48))  # (GPU memory GiB at least, patch edge)
PATCH_2D_PER_3D = 4  # a 2D patch edge is this many times the 3D one (similar cost)
VOXELS_PER_BATCH = {"cpu": 8 * 32 ** 3, "cuda": 2 * 128 ** 3}  # patches per batch = this / patch voxels
BATCH_RANGE = (2, 16)
GPU_NETWORK = {"name": "unet", "channels": [32, 64, 128, 256], "strides": [2, 2, 2]}
LEARNING_RATES = {"adam": 1e-3, "rmsprop": 1e-3, "rmsprop-official": 1e-3, "sgd": 1e-2}
FINE_TUNING_LR_FACTOR = 0.3
BUDGET_SHARE_FOR_STEPS = 0.8  # the rest of the budget: reading cases, validation, logit statistics
SAMPLING_OVERHEAD = 1.15  # patch sampling and augmentation on top of the measured network step
ITERATION_RANGE = (100, 50_000)
VALIDATIONS_PER_RUN = 12
INHERITED_FIELDS = ("network", "normalization", "target_spacing")  # fine-tuning keeps the initial model's
CT_MIN, CT_MAX = -500.0, 300.0  # a channel below CT_MIN (air) and above CT_MAX (bone), in integers, looks like CT
CT_PERCENTILES = (0.5, 99.5)  # nnU-Net's CT window: foreground intensity percentiles


# ---------------------------------------------------------------------------- fingerprint

def _diameter_mm(volume_mm3: float) -> float:
    """Diameter of the sphere of this volume."""
    return float(np.cbrt(6.0 * volume_mm3 / np.pi))


def _extent_mm(region: np.ndarray, spacing: Sequence[float]) -> List[float]:
    """(z, y, x) size in mm of the bounding box of a boolean array (the whole array when empty)."""
    if not region.any():
        return [float(n * s) for n, s in zip(region.shape, spacing)]
    lows_highs = [np.flatnonzero(region.any(axis=tuple(a for a in range(3) if a != k))) for k in range(3)]
    return [float((idx[-1] - idx[0] + 1) * s) for idx, s in zip(lows_highs, spacing)]


def _case_fingerprint(spec: CaseSpec, class_map: ClassMap) -> dict:
    case = load_case(spec, class_map, Normalization(mode="none"))
    spacing = [float(s) for s in case.spacing]
    voxel_ml = float(np.prod(spacing)) / 1000.0
    estimated = np.logical_or.reduce([estimated_foreground(c) for c in case.image])
    roi = case.mask if case.mask is not None else estimated
    channels = []
    for channel in case.image:
        inside = channel[roi] if roi.any() else channel.ravel()
        channels.append({"min": float(channel.min()), "max": float(channel.max()),
                         "mean": float(inside.mean(dtype=np.float64)), "std": float(inside.std(dtype=np.float64)),
                         "integer": bool(np.all(np.mod(inside[:: max(1, inside.size // 100_000)], 1) == 0)),
                         "foreground_percentiles": [float(v) for v in np.percentile(
                             channel[case.label > 0], CT_PERCENTILES)] if (case.label > 0).any() else None})
    classes = {}
    for index, name in enumerate(class_map.names):
        region = case.label == index
        count = int(region.sum())
        largest = 0
        if count and index > 0:
            components, _ = connected_components(region)
            largest = int(np.bincount(components.ravel())[1:].max())
        classes[name] = {"voxels": count, "volume_ml": count * voxel_ml,
                         "largest_component_ml": largest * voxel_ml,
                         "roi_share": float((region & roi).sum() / max(int(roi.sum()), 1))}
    return {"id": spec.id, "spacing": spacing, "shape": list(case.image.shape[1:]),
            "roi": "mask" if case.mask is not None else "estimated", "roi_extent_mm": _extent_mm(roi, spacing),
            "mask_vs_estimate_dice": None if case.mask is None else dice(
                int((case.mask & estimated).sum()), int(estimated.sum()), int(case.mask.sum())),
            "channels": channels, "classes": classes}


def _modality(channels: List[dict]) -> str:
    """``ct`` (air below CT_MIN, bone above CT_MAX, integer values), ``mr-normalised`` (mean ~0, std ~1 in the
    ROI) or ``mr``."""
    if all(c["integer"] and c["min"] <= CT_MIN and c["max"] >= CT_MAX for c in channels):
        return "ct"
    if all(abs(c["mean"]) < 0.5 and 0.5 < c["std"] < 2.0 for c in channels):
        return "mr-normalised"
    return "mr"


def fingerprint(specs: Sequence[CaseSpec], class_map: ClassMap, rarity: Sequence[float]) -> dict:
    """What the plan needs to know about the training cases (read at their own spacing)."""
    cases = [_case_fingerprint(spec, class_map) for spec in specs]
    n_channels = len(cases[0]["channels"])
    channels = [{"min": min(c["channels"][k]["min"] for c in cases),
                 "max": max(c["channels"][k]["max"] for c in cases),
                 "mean": float(np.mean([c["channels"][k]["mean"] for c in cases])),
                 "std": float(np.mean([c["channels"][k]["std"] for c in cases])),
                 "integer": all(c["channels"][k]["integer"] for c in cases),
                 "foreground_percentiles": _median_pair([c["channels"][k]["foreground_percentiles"] for c in cases])}
                for k in range(n_channels)]
    classes = {}
    for index, name in enumerate(class_map.names):
        per_case = [c["classes"][name] for c in cases]
        present = [p for p in per_case if p["voxels"]]
        largest = float(np.median([p["largest_component_ml"] for p in present])) if present else 0.0
        roi_share = float(np.mean([p["roi_share"] for p in per_case]))
        classes[name] = {"rare": bool(rarity[index] > 0), "cases_with_class": len(present),
                         "median_volume_ml": float(np.median([p["volume_ml"] for p in per_case])),
                         "median_largest_component_ml": largest,
                         "structure_diameter_mm": _diameter_mm(largest * 1000.0) if largest else None,
                         "imbalance": (1.0 - roi_share) / roi_share if roi_share > 0 else None}
    return {"cases": cases, "n_cases": len(cases),
            "median_spacing": [float(v) for v in np.median([c["spacing"] for c in cases], axis=0)],
            "median_shape": [int(v) for v in np.median([c["shape"] for c in cases], axis=0)],
            "median_roi_extent_mm": [float(v) for v in np.median([c["roi_extent_mm"] for c in cases], axis=0)],
            "two_d": all(c["shape"][0] == 1 for c in cases),
            "channels": channels, "modality": _modality(channels), "classes": classes}


def _median_pair(pairs: List[Optional[List[float]]]) -> Optional[List[float]]:
    pairs = [p for p in pairs if p is not None]
    return [float(v) for v in np.median(pairs, axis=0)] if pairs else None


# ---------------------------------------------------------------------------- device

def device_profile(device) -> dict:
    """The device's kind, name, CPU cores available to this process and GPU memory."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": props.name, "cores": cores,
                "memory_gib": round(props.total_memory / 2 ** 30, 1)}
    return {"type": "cpu", "name": platform.processor() or platform.machine() or "CPU", "cores": cores,
            "memory_gib": None}


# ---------------------------------------------------------------------------- plan

def _device_patch_edge(device: dict) -> int:
    if device["type"] == "cuda":
        return next(edge for memory, edge in GPU_PATCHES if (device["memory_gib"] or 0.0) >= memory)
    return CPU_PATCH_MANY_CORES if device["cores"] >= MANY_CORES else CPU_PATCH


def _round_up(value: float, factor: int) -> int:
    return max(factor, int(math.ceil(value / factor)) * factor)


def _smallest_rare_diameter(fp: dict) -> Optional[float]:
    sizes = [c["structure_diameter_mm"] for c in fp["classes"].values() if c["rare"] and c["structure_diameter_mm"]]
    return min(sizes) if sizes else None


def _plan_spacing(fp: dict, patch: Sequence[int]) -> tuple:
    """(spacing, reason): the finest spacing from SPACING_FACTORS that gives a patch enough context."""
    native = fp["median_spacing"]
    axes = [k for k in range(3) if patch[k] > 1 and not (k == 0 and fp["two_d"])]
    finest = min(native[k] for k in axes)
    diameter = _smallest_rare_diameter(fp)
    wanted = max(MIN_CONTEXT_MM, CONTEXT_PER_STRUCTURE * (diameter or 0.0))
    context = [min(wanted, fp["median_roi_extent_mm"][k]) for k in range(3)]
    cap = diameter / MIN_STRUCTURE_VOXELS if diameter else math.inf

    def spacing(factor: float) -> List[float]:
        return [max(native[k], finest * factor) if k in axes else native[k] for k in range(3)]

    allowed = [f for f in SPACING_FACTORS if f == 1.0 or finest * f <= cap]
    enough = [f for f in allowed if all(patch[k] * spacing(f)[k] >= CONTEXT_SHORTFALL * context[k] for k in axes)]
    factor = enough[0] if enough else allowed[-1]
    chosen = [round(v, 3) for v in spacing(factor)]
    sees = " x ".join(f"{patch[k] * chosen[k]:.0f}" for k in axes)
    structure = f"the smallest rare structure is about {diameter:.0f} mm across" if diameter else "no rare structure"
    if factor == 1.0:
        why = (f"the images' own (median) spacing: a patch already sees {sees} mm" if enough else
               f"the images' own (median) spacing: coarser would leave fewer than {MIN_STRUCTURE_VOXELS:.0f} voxels "
               f"across the smallest rare structure ({structure})")
    else:
        why = (f"{factor:g} times the finest native spacing {finest:g} mm so that a {list(patch)} patch sees "
               f"{sees} mm of the about {max(context):.0f} mm of context wanted ({structure}; at least "
               f"{MIN_STRUCTURE_VOXELS:.0f} voxels across it are kept)")
    return chosen, why


def _plan_patch(fp: dict, device: dict) -> tuple:
    edge = _device_patch_edge(device)
    where = (f"a GPU with {device['memory_gib']} GiB" if device["type"] == "cuda"
             else f"a CPU with {device['cores']} core(s)")
    if fp["two_d"]:
        return [1, edge * PATCH_2D_PER_3D, edge * PATCH_2D_PER_3D], f"2D images; {where} trains this patch in time"
    return [edge] * 3, f"{where} trains {edge}³-voxel patches in reasonable time"


def _fit_patch(patch: List[int], spacing: Sequence[float], fp: dict, factor: int) -> List[int]:
    """The patch cut to the region of interest's extent at ``spacing`` (multiples of ``factor``)."""
    extent = [e / s for e, s in zip(fp["median_roi_extent_mm"], spacing)]
    return [1 if p == 1 else min(p, _round_up(e, factor)) for p, e in zip(patch, extent)]


def _plan_normalization(fp: dict) -> tuple:
    if fp["modality"] == "ct":
        windows = [c["foreground_percentiles"] for c in fp["channels"]]
        if all(w is not None and w[0] < w[1] for w in windows) and len(windows) == 1:
            low, high = windows[0]
            return {"mode": "ct", "window": [round(low, 1), round(high, 1)], "statistics": "foreground"}, (
                f"the intensities look like CT (air at {fp['channels'][0]['min']:g}, integer values): clipped to the "
                f"{CT_PERCENTILES[0]:g}-{CT_PERCENTILES[1]:g} percentiles of the labelled voxels (nnU-Net's CT scheme)")
    kind = {"ct": "CT-like", "mr-normalised": "already normalised MR", "mr": "MR (raw intensities)"}[fp["modality"]]
    masks = [c["mask_vs_estimate_dice"] for c in fp["cases"] if c["mask_vs_estimate_dice"] is not None]
    agreement = (f"; the ROI masks and the estimated foreground agree with Dice {min(masks):.2f} or more"
                 if masks else "")
    return {"mode": "zscore", "window": None, "statistics": "foreground"}, (
        f"{kind}: z-score per channel over the voxels that are not a constant background, the same with or without "
        f"an ROI mask, so that a case given as image files alone is normalised as in training{agreement}")


def make_plan(fp: dict, device: dict, given: Dict[str, object], *, downsampling: int = 8, optimizer: str = "adam",
              initial_model: Optional[dict] = None) -> dict:
    """The plan of the planned fields that ``given`` leaves None, except ``iterations`` and
    ``validation_interval`` (:func:`fit_iterations`: they need a measured step time).

    ``initial_model``: the meta of the model fine-tuned from; its network (which its weights
    need), normalisation and spacing are kept unless the job sets them.
    """
    settings, reasons, source = {}, {}, {}
    inherited = {name: (initial_model or {}).get(name) for name in INHERITED_FIELDS}
    inherited["target_spacing"] = inherited["target_spacing"] or (NATIVE if initial_model else None)

    def choose(name: str, value, reason: str) -> None:
        if given.get(name) is not None:
            settings[name], reasons[name], source[name] = given[name], "set in the job", "user"
        elif inherited.get(name) is not None:
            settings[name], source[name] = inherited[name], "initial model"
            reasons[name] = "the initial model's: fine-tuning keeps what its weights were trained with"
        else:
            settings[name], reasons[name], source[name] = value, reason, "plan"

    planned_patch, patch_reason = _plan_patch(fp, device)
    patch = given.get("patch_size") or planned_patch
    choose("target_spacing", *_plan_spacing(fp, patch))
    spacing = fp["median_spacing"] if settings["target_spacing"] == NATIVE else settings["target_spacing"]
    fitted = _fit_patch(planned_patch, spacing, fp, downsampling)
    if fitted != planned_patch:
        extent = " x ".join(f"{e:.0f}" for e in fp["median_roi_extent_mm"])
        patch_reason += f", cut to the region of interest ({extent} mm)"
    choose("patch_size", fitted, patch_reason)
    voxels = int(np.prod(settings["patch_size"]))
    batch = int(np.clip(round(VOXELS_PER_BATCH[device["type"]] / voxels), *BATCH_RANGE))
    choose("batch_size", batch, f"about {VOXELS_PER_BATCH[device['type']]:,} voxels per batch on this device "
                                f"({BATCH_RANGE[0]} to {BATCH_RANGE[1]} patches)")
    if device["type"] == "cuda":
        choose("network", network_config(GPU_NETWORK), "a GPU: MONAI UNet with twice the default widths")
    else:
        choose("network", network_config(None), "a CPU: MONAI UNet with the default widths (16 to 128 features)")
    normalization, why = _plan_normalization(fp)
    choose("normalization", normalization, why)
    lr = LEARNING_RATES[optimizer] * (FINE_TUNING_LR_FACTOR if initial_model else 1.0)
    choose("learning_rate", lr, f"{optimizer} " + (f"fine-tuning from a trained model ({FINE_TUNING_LR_FACTOR:g} "
                                                   f"times the usual {LEARNING_RATES[optimizer]:g})" if initial_model
                                                   else "from scratch, decayed over the run"))
    for name in ("iterations", "validation_interval"):
        if given.get(name) is not None:
            choose(name, given[name], "")
    return {"format": PLAN_FORMAT, "version": PLAN_VERSION, "settings": settings, "reasons": reasons,
            "source": source, "fingerprint": _summary(fp), "device": device, "step_seconds": None,
            "estimated_minutes": None}


def technique_passes(technique) -> int:
    """Forward/backward passes of one iteration: the clean batch, +2 for adversarial training (its direction and
    its batch), +1 for mixup."""
    return 1 + 2 * bool(technique.adversarial) + bool(technique.mixup)


def fit_iterations(plan: dict, step_seconds: float, budget_minutes: float) -> dict:
    """Fill ``iterations`` (to fit the budget) and ``validation_interval`` of ``plan``; estimate the run's time."""
    settings, reasons, source = plan["settings"], plan["reasons"], plan["source"]
    if "iterations" not in settings:
        usable = BUDGET_SHARE_FOR_STEPS * budget_minutes * 60.0
        iterations = int(np.clip(int(usable / step_seconds / 10) * 10, *ITERATION_RANGE))
        settings["iterations"], source["iterations"] = iterations, "plan"
        reasons["iterations"] = (f"{BUDGET_SHARE_FOR_STEPS:.0%} of the {budget_minutes:g}-minute budget at "
                                 f"{step_seconds:.2f} s per iteration measured on this device (the rest: reading "
                                 f"cases, validation, logit statistics)")
        if iterations == ITERATION_RANGE[0] and iterations * step_seconds > usable:
            reasons["iterations"] += f"; raised to the minimum of {ITERATION_RANGE[0]}: the run will take longer"
    if "validation_interval" not in settings:
        interval = max(10, int(round(settings["iterations"] / VALIDATIONS_PER_RUN / 10.0)) * 10)
        settings["validation_interval"], source["validation_interval"] = min(interval, settings["iterations"]), "plan"
        reasons["validation_interval"] = f"about {VALIDATIONS_PER_RUN} validations per run"
    plan["step_seconds"] = round(step_seconds, 4)
    plan["estimated_minutes"] = round(settings["iterations"] * step_seconds / 60.0 / BUDGET_SHARE_FOR_STEPS, 1)
    return plan


def measure_step_seconds(settings: dict, n_channels: int, n_classes: int, spatial_dims: int, device, technique,
                         warmup: int = 2, steps: int = 5) -> float:
    """Seconds per training iteration on ``device``: the median of ``steps`` network steps on random patches of the
    planned size (after ``warmup`` steps: the first ones set up kernels), times the technique's passes
    (:func:`technique_passes`) and SAMPLING_OVERHEAD."""
    import torch

    from .network import build_network

    torch.manual_seed(0)
    model = build_network(settings["network"], n_channels, n_classes, spatial_dims).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    patch = settings["patch_size"][1:] if spatial_dims == 2 else settings["patch_size"]
    x = torch.randn(settings["batch_size"], n_channels, *patch, device=device)
    y = torch.randint(0, n_classes, (settings["batch_size"], *patch), device=device)
    times = []
    for _ in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times[warmup:])) * technique_passes(technique) * SAMPLING_OVERHEAD


def _summary(fp: dict) -> dict:
    """The fingerprint without the per-case channel details (kept short for events and model files)."""
    return {**{k: v for k, v in fp.items() if k != "cases"},
            "cases": [{k: c[k] for k in ("id", "spacing", "shape", "roi", "roi_extent_mm", "mask_vs_estimate_dice")}
                      for c in fp["cases"]]}


def plan_job(job, device, sink=None) -> dict:
    """The plan of ``job`` (a jobspec.Job) on ``device`` (a torch.device): fingerprint of its training cases, the
    settings it leaves out, and a step time measured with them."""
    specs = job.cases_with_role("train")
    if sink is not None:
        sink.emit("progress", phase="plan", iteration=0, total=len(specs))
    fp = fingerprint(specs, job.class_map, job.rarity)
    initial = load_initial_model(job.initial_checkpoint)[1] if job.initial_checkpoint else None
    network = job.network or (initial or {}).get("network") or network_config(None)
    plan = make_plan(fp, device_profile(device), job.given(), downsampling=downsampling_factor(network),
                     optimizer=job.optimizer, initial_model=initial)
    step = measure_step_seconds(plan["settings"], len(job.channels), job.class_map.num_classes,
                                2 if fp["two_d"] else 3, device, job.technique)
    if sink is not None:
        sink.emit("progress", phase="plan", iteration=len(specs), total=len(specs))
    plan["time_budget_minutes"] = job.time_budget_minutes
    return fit_iterations(plan, step, job.time_budget_minutes)
