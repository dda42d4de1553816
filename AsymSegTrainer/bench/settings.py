"""The settings every run of a bench folder shares: derived from the command line, pinned in OUT/bench.json.

``OUT/bench.json`` pins them: a second invocation with other settings is refused (methods,
folds and seeds may grow), so the runs of one folder always compare.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path
from typing import List, Optional

from ..data import ClassMap, read_nnunet_dataset
from ..errors import InputError
from ..jobspec import parse_target_spacing
from .folds import SPLIT_SEED

BENCH_FORMAT = "asymseg-bench"
BENCH_VERSION = 1

BENCH_NORMALIZATION = {"mode": "zscore"}
"""Bench runs pin every setting (no plan): the same runs on every machine."""
DEFAULTS = {"batch_size": 4, "patch_size": [48, 48, 48], "learning_rate": 1e-3, "overlap": 0.5}
"""Bench defaults where they differ from a job's: learning rate 1e-3 (the paper's BRATS rate;
short budgets need it)."""

OFFICIAL = {"optimizer": "rmsprop-official", "learning_rate": 1e-3, "lr_schedule": "official", "batch_size": 10,
            "patch_size": [40, 40, 40]}
"""``--official``: the official code's BRATS training as closely as a CPU allows (METHOD.md §5): its RMSProp, lr
1e-3 halved on its schedule, CE only (the job's default loss), batch 10. What differs, and says so in report.md:
the network (MONAI UNet, not DeepMedic), the patch (40^3, the multiple of 8 nearest 37^3) and the number of
iterations (the official run makes about 70,000). Explicit options still override these."""
OFFICIAL_DIFFERENCES = ("network: MONAI UNet instead of DeepMedic; patch 40³ instead of 37³ (a multiple of the "
                        "UNet's downsampling factor 8); iterations as given instead of about 70,000")

QUICK = {"network": {"name": "unet", "channels": [4, 8], "strides": [2], "num_res_units": 1},
         "patch_size": [16, 16, 16], "batch_size": 2, "max_iterations": 5, "max_voxels_per_axis": 48}
"""``--quick``: a tiny network, small patches, at most 5 iterations per run and, unless
``--target-spacing`` is given, images resampled to at most ~48 voxels per axis (a smoke run)."""


def _opt(args, name, default=None):
    value = getattr(args, name, None)
    return default if value is None else value


def bench_settings(args) -> dict:
    """The settings that every run of an OUT folder must share (pinned in OUT/bench.json)."""
    quick = bool(getattr(args, "quick", False))
    official = bool(getattr(args, "official", False))
    defaults = {**DEFAULTS, "optimizer": "adam", "lr_schedule": "poly", **(OFFICIAL if official else {})}
    iterations = int(args.iterations)
    if iterations < 1:
        raise InputError(f"--iterations must be >= 1; got {iterations}.", "E.g. --iterations 500.")
    if quick:
        iterations = min(iterations, QUICK["max_iterations"])
    patch = _opt(args, "patch_size", QUICK["patch_size"] if quick else defaults["patch_size"])
    spacing = parse_target_spacing(_opt(args, "target_spacing"))
    if quick and spacing is None:
        spacing = quick_spacing(Path(args.dataset))
    network = _opt(args, "network", QUICK["network"] if quick else None)
    if isinstance(network, str):
        network = json.loads(network)
    if network is not None and not isinstance(network, dict):
        raise InputError(f"--network must be a JSON object; got {network!r}.",
                         'E.g. --network \'{"name": "unet", "channels": [8, 16, 32], "strides": [2, 2]}\'.')
    from ..inference import check_overlap
    from ..network import network_config
    class_map = ClassMap.parse(list(args.classes))
    return {
        "dataset": str(Path(args.dataset).expanduser().resolve()),
        "classes": list(args.classes),
        "class_names": class_map.names,
        "train_size": int(args.train_size),
        "split_seed": SPLIT_SEED,
        "iterations": iterations,
        "quick": quick,
        "patch_size": [int(p) for p in patch],
        "target_spacing": spacing if isinstance(spacing, list) else None,
        "batch_size": int(_opt(args, "batch_size", QUICK["batch_size"] if quick else defaults["batch_size"])),
        "network": network_config(network),
        "learning_rate": float(_opt(args, "learning_rate", defaults["learning_rate"])),
        "optimizer": _opt(args, "optimizer", defaults["optimizer"]),
        "lr_schedule": defaults["lr_schedule"],
        "official": official,
        "validation_interval": max(1, iterations // 5),
        "overlap": check_overlap(_opt(args, "overlap", DEFAULTS["overlap"])),
    }


def quick_spacing(dataset: Path) -> Optional[List[float]]:
    """--quick without --target-spacing: an isotropic spacing giving at most ~48 voxels per axis
    (None when the images are that small already), so a smoke run on full-size scans stays quick."""
    import SimpleITK as sitk

    _, specs = read_nnunet_dataset(dataset)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(specs[0].images[0]))
    reader.ReadImageInformation()
    extent = [n * s for n, s in zip(reader.GetSize(), reader.GetSpacing())]
    spacing = round(max(extent) / QUICK["max_voxels_per_axis"], 1)
    return [spacing] * 3 if spacing > max(reader.GetSpacing()) else None


def command_line(args) -> str:
    """The bench command as a user would type it (reconstructed from the parsed arguments)."""
    parts = ["python", "-m", "AsymSegTrainer", "bench", "--dataset", str(args.dataset), "--classes", *args.classes,
             "--train-size", str(args.train_size), "--folds", str(args.folds), "--seeds", str(args.seeds),
             "--methods", args.methods, "--iterations", str(args.iterations), "--out", str(args.out)]
    if getattr(args, "quick", False):
        parts.append("--quick")
    for flag, name in (("--target-spacing", "target_spacing"), ("--patch-size", "patch_size")):
        if getattr(args, name, None):
            parts += [flag, *(f"{v:g}" if isinstance(v, float) else str(v) for v in getattr(args, name))]
    for flag, name in (("--batch-size", "batch_size"), ("--device", "device")):
        value = getattr(args, name, None)
        if value is not None and not (name == "device" and value == "auto"):
            parts += [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def pin_settings(out: Path, settings: dict) -> None:
    """Create OUT/bench.json atomically (link of a temporary file), or check it against ``settings``."""
    path = out / "bench.json"
    record = {"format": BENCH_FORMAT, "version": BENCH_VERSION, "settings": settings, "created": time.time()}
    if not path.exists():
        tmp = out / f".bench.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    try:
        pinned = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is unreadable ({exc}).", "Choose a new --out folder, or delete that file.") from exc
    if pinned.get("format") != BENCH_FORMAT:
        raise InputError(f"{out} holds a bench.json that is not a benchmark's.", "Choose a new --out folder.")
    differ = sorted(k for k in set(settings) | set(pinned["settings"]) if settings.get(k) != pinned["settings"].get(k))
    if differ:
        detail = "; ".join(f"{k}: {pinned['settings'].get(k)!r} there, {settings.get(k)!r} now" for k in differ)
        raise InputError(f"{out} holds a benchmark with other settings ({detail}); its runs would not compare.",
                         "Use the same settings to resume or extend it (more methods, folds or seeds are fine), "
                         "or choose a new --out folder.")


def created(out: Path) -> Optional[float]:
    """When OUT/bench.json was created (the benchmark's first start); None when it cannot be read."""
    try:
        return json.loads((out / "bench.json").read_text(encoding="utf-8"))["created"]
    except (OSError, ValueError, KeyError):
        return None
