"""MONAI bundles: export an AsymSeg model as one, and fine-tune from one.

``export --model M --format monai-bundle --out DIR`` writes the MONAI Bundle layout
(docs.monai.io, "MONAI Bundle Specification"), which MONAI loads as it is:

- ``configs/metadata.json``: the specification's mandatory keys (versions, task, description,
  authors, copyright, ``network_data_format`` with the input channels and output classes),
  plus ``asymseg``: where the bundle came from and the model's normalisation, read back when
  the bundle is fine-tuned;
- ``configs/inference.json``: ``network_def`` (the MONAI ``UNet`` / ``DynUNet`` / ``SegResNet`` the engine
  builds, :func:`network.network_arguments`), the pre-processing the model needs (channel
  order, target spacing, z-score over the foreground or the CT window, and a transpose to the
  engine's (z, y, x) array order), a sliding-window inferer with the model's patch, and the
  usual evaluator to run it with ``python -m monai.bundle run``;
- ``models/model.pt``: the state dict, loadable with ``torch.load(weights_only=True)`` into
  the instantiated ``network_def``;
- ``docs/README.md``: where it came from and how to run it.

The folder is written beside DIR and renamed onto it once complete; a non-empty DIR is refused.

``train --initial-checkpoint DIR`` takes such a bundle, or any bundle whose ``network_def`` is a
MONAI UNet, DynUNet or SegResNet the engine builds with the same arguments (:func:`load_initial_model`).
A bundle's ``inference.json`` is read as plain JSON, never through ``ConfigParser``: its ``$``
expressions are Python code, and the engine runs none of a bundle's code. Weights are read with
``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from .errors import InputError, ResourceError, as_user_error
from .events import EventSink
from .files import atomic_output, write_json, write_text
from .network import MONAI_CLASSES, load_model_file, network_arguments, network_config
from .protocol import CHOICES
from .runtime import versions

BUNDLE_FORMAT = "monai-bundle"
METADATA, INFERENCE = Path("configs/metadata.json"), Path("configs/inference.json")
WEIGHTS, README = Path("models/model.pt"), Path("docs/README.md")
BUNDLE_VERSION = "0.1.0"
REFERENCE = ("Z. Li, K. Kamnitsas, B. Glocker. Analyzing Overfitting under Class Imbalance in Neural Networks for Image "
             "Segmentation. IEEE Transactions on Medical Imaging, 2020. https://doi.org/10.1109/TMI.2020.3046692")
ZSCORE_FOREGROUND = (
    "$lambda x: torch.cat([((c - v.double().mean().item()) / (v.double().std(unbiased=False).item() or 1.0))[None] "
    "for c in x for v in [c[c != c.min()] if bool((c == c.min()).float().mean() >= 0.1) and bool((c != c.min()).any()) "
    "else c.flatten()]])")
"""AsymSeg's z-score per channel over the estimated foreground (data.normalize, data.estimated_foreground): the
voxels that are not the channel's minimum when that minimum fills at least 10% of the volume, else all voxels."""
BUNDLE_HINT = ("A MONAI bundle for fine-tuning holds configs/metadata.json, configs/inference.json (with network_def) "
               "and models/model.pt; python -m AsymSegTrainer export --model M --format monai-bundle --out DIR "
               "writes one.")


# ---------------------------------------------------------------------------- export

def _spatial_order(dims: int) -> List[int]:
    """Transpose indices from MONAI's loaded (C, x, y[, z]) to the engine's (C, [z,] y, x)."""
    return [0] + list(range(dims, 0, -1))


def _normalization_transform(normalization: dict) -> Optional[dict]:
    """The MONAI transform of an AsymSeg normalisation (None for ``none``)."""
    if normalization["mode"] == "ct":
        low, high = normalization["window"]
        return {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": low, "a_max": high, "b_min": -1.0,
                "b_max": 1.0, "clip": True}
    if normalization["mode"] == "zscore":
        return {"_target_": "Lambdad", "keys": "image", "func": "@zscore_foreground"}
    return None


def inference_config(meta: dict) -> dict:
    """``configs/inference.json`` of a model's meta: network_def, pre-processing, inferer and an evaluator."""
    dims, channels = int(meta["spatial_dims"]), list(meta["channels"])
    network_def = {"_target_": f"monai.networks.nets.{MONAI_CLASSES[network_config(meta['network'])['name']]}",
                   **network_arguments(meta["network"], len(channels), len(meta["class_names"]), dims)}
    transforms = [{"_target_": "LoadImaged", "keys": "image", "image_only": True},
                  {"_target_": "EnsureChannelFirstd", "keys": "image"}]
    if meta.get("target_spacing"):
        transforms.append({"_target_": "Spacingd", "keys": "image", "mode": "bilinear",
                           "pixdim": list(reversed(meta["target_spacing"]))[:dims]})
    transforms.append({"_target_": "Transposed", "keys": "image", "indices": _spatial_order(dims)})
    normalization = _normalization_transform(meta["normalization"])
    transforms += [normalization] if normalization else []
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "imagesTs",
        "file_ending": ".nii.gz",
        "channels": channels,
        "datalist": "$[{'image': [f[:-len('_0000' + @file_ending)] + '_%04d' % k + @file_ending for k in "
                    "range(len(@channels))]} for f in sorted(glob.glob(os.path.join(@dataset_dir, '*_0000' + "
                    "@file_ending)))]",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        **({"zscore_foreground": ZSCORE_FOREGROUND} if meta["normalization"]["mode"] == "zscore" else {}),
        "preprocessing": {"_target_": "Compose", "transforms": transforms},
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [int(p) for p in meta["patch_size"]][-dims:],
                    "sw_batch_size": 4, "overlap": 0.5, "mode": "gaussian"},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
             "output_dtype": "$numpy.uint8", "resample": False, "separate_folder": False}]},
        "handlers": [{"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                      "load_dict": {"model": "@network"}, "map_location": "@device"},
                     {"_target_": "StatsHandler", "iteration_log": False}],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": False},
        "run": ["$@evaluator.run()"],
    }


def _rare_names(meta: dict) -> List[str]:
    return [name for name, r in zip(meta["class_names"], meta["rarity"]) if r > 0]


def metadata(meta: dict, source: Path, digest: str) -> dict:
    """``configs/metadata.json`` of a model's meta (the MONAI Bundle Specification's keys, plus ``asymseg``)."""
    from monai.bundle.utils import DEFAULT_METADATA

    dims, channels, classes = int(meta["spatial_dims"]), list(meta["channels"]), list(meta["class_names"])
    patch = [int(p) for p in meta["patch_size"]][-dims:]
    stamp = versions()
    mode = meta["normalization"]["mode"]
    technique = meta["technique"]["preset"]
    tensor = {"type": "image", "spatial_shape": patch, "dtype": "float32", "is_patch_data": True}
    return {
        "version": BUNDLE_VERSION,
        "changelog": {BUNDLE_VERSION: f"exported by AsymSeg {stamp['asymseg']} from {source.name}"},
        "monai_version": stamp["monai"], "pytorch_version": stamp["torch"], "numpy_version": stamp["numpy"],
        **{key: {} for key in DEFAULT_METADATA if key.endswith("packages_version")},  # its name differs by version
        "name": f"AsymSeg {', '.join(_rare_names(meta))}",
        "task": f"Segmentation of {', '.join(classes[1:])} from {', '.join(channels)}",
        "description": (f"A MONAI {network_config(meta['network'])['name']} fine-tuned by AsymSeg with the "
                        f"{technique} technique against the under-segmentation of rare classes "
                        f"({', '.join(_rare_names(meta))}); exported from the model file {source.name}."),
        "authors": "Unknown: exported by AsymSeg from a local training run; name its authors before sharing",
        "copyright": "Unknown: that of the training data and run; state it before sharing",
        "intended_use": "Research only: not for diagnostic use",
        "references": [REFERENCE],
        "network_data_format": {
            "inputs": {"image": {**tensor, "format": "hounsfield" if mode == "ct" else "magnitude",
                                 "modality": "CT" if mode == "ct" else "MR", "num_channels": len(channels),
                                 "value_range": [-1, 1] if mode == "ct" else [],
                                 "channel_def": {str(i): name for i, name in enumerate(channels)}}},
            "outputs": {"pred": {**tensor, "format": "labels", "num_channels": len(classes), "value_range": [],
                                 "channel_def": {str(i): name for i, name in enumerate(classes)}}}},
        "asymseg": {"model": str(source), "model_sha256": digest, "classes": meta["classes"],
                    "rarity": meta["rarity"], "technique": meta["technique"],
                    "normalization": meta["normalization"], "target_spacing": meta.get("target_spacing")},
    }


def readme(meta: dict, source: Path, digest: str) -> str:
    """``docs/README.md``: where the bundle came from, what its pipeline does, how to run it."""
    classes, channels = list(meta["class_names"]), list(meta["channels"])
    spacing = meta.get("target_spacing")
    normalization = meta["normalization"]
    norm_text = {"ct": f"clipped to the CT window {normalization.get('window')} and scaled to [-1, 1]",
                 "zscore": "z-score per channel over the foreground (the voxels that are not the channel's minimum "
                           "when it fills at least 10% of the volume; the expression `zscore_foreground`)",
                 "none": "none"}[normalization["mode"]]
    resampling = (f"to {list(reversed(spacing))} mm (x, y, z; `Spacingd`, bilinear; AsymSeg resamples with "
                  "SimpleITK on a centred grid, so a boundary voxel can differ)" if spacing
                  else "none (the images are used at their own spacing)")
    outputs = ", ".join(f"{i} {name}" for i, name in enumerate(classes))
    return f"""# AsymSeg model: {', '.join(classes[1:])}

Exported by AsymSeg {versions()['asymseg']} (`python -m AsymSegTrainer export --format monai-bundle`) from
the model file `{source}` (SHA-256 `{digest}`), fine-tuned with the `{meta['technique']['preset']}`
technique (rare classes: {', '.join(_rare_names(meta))}). Research only: not for diagnostic use.

## Input and output

- Input: {len(channels)} channel(s), one file per channel, in this order: {', '.join(channels)}.
- Output: {len(classes)} logit channels; the label is their arg-max: {outputs}.

## Pre-processing (`configs/inference.json`, `preprocessing`)

1. Read the channel files (`LoadImaged`: needs `nibabel` or `itk`) and stack them, channel first.
2. Resample: {resampling}.
3. Transpose to AsymSeg's array order (channel, z, y, x), which the network was trained on.
4. Normalise: {norm_text}.

The sliding-window inferer uses the training patch {list(meta['patch_size'])} (z, y, x) with Gaussian blending;
the logits are brought back to the input grid (`Invertd`, linear) before the arg-max, as AsymSeg's `infer` does.
Not included: the post-processing and logit offsets AsymSeg chose on validation cases (its `infer` applies them).

## Run

In this folder, with MONAI's optional packages `fire`, `pytorch-ignite` and `nibabel`:

    python -m monai.bundle run --config_file configs/inference.json --bundle_root . --dataset_dir DIR

reads `DIR/<case>_0000.nii.gz`, `<case>_0001.nii.gz`, ... (nnU-Net naming) and writes
`eval/<case>_0000_seg.nii.gz`. To fine-tune it with AsymSeg:
`python -m AsymSegTrainer train ... --initial-checkpoint THIS_FOLDER`.

## Reference

{REFERENCE}
"""


def _check_empty(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"The bundle folder {out} is not empty{' (it is a file)' if not out.is_dir() else ''}.",
                         "Give a new or empty folder: export never writes into one that holds files.")


@contextlib.contextmanager
def _staged_folder(out: Path) -> Iterator[Path]:
    """Yield a new folder beside ``out`` for files.atomic_output's writers; once the block completes it replaces
    ``out`` (new or empty) whole. A failure removes the staged folder and leaves ``out`` as it was."""
    staged = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        staged.mkdir(parents=True)
        yield staged
        if out.is_dir():
            out.rmdir()  # empty (checked before): an entry that appeared since makes this fail, and nothing is lost
        os.replace(staged, out)
    except OSError as exc:
        raise as_user_error(exc) or ResourceError(f"Cannot write the bundle {out}: {exc.strerror or exc}.",
                                                  "Choose a folder you can write to.") from exc
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def export_bundle(model, out, sink: Optional[EventSink] = None) -> Dict[str, str]:
    """``export --model M --format monai-bundle --out DIR``: write the MONAI bundle of an AsymSeg model file.

    Returns output name -> path: ``bundle``, ``metadata``, ``inference``, ``weights``, ``readme``.
    InputError when DIR is not empty or the model file is not a consistent AsymSeg model.
    """
    from .inference import load_predictor

    sink = sink or EventSink(progress_bar=False)
    out = Path(out).expanduser().absolute()
    _check_empty(out)
    predictor = load_predictor(model, "cpu")
    source = predictor.path.absolute()
    sink.emit("start", command="export", config={"model": str(source), "format": BUNDLE_FORMAT, "out": str(out)},
              device=str(predictor.device), versions=versions(), output=str(out))
    meta = {**predictor.meta, "class_names": predictor.class_names, "normalization": predictor.normalization.to_dict()}
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    with _staged_folder(out) as staged:
        write_json(staged / METADATA, metadata(meta, source, digest))
        write_json(staged / INFERENCE, inference_config(meta))
        write_text(staged / README, readme(meta, source, digest))
        with atomic_output(staged / WEIGHTS) as tmp:
            torch.save(predictor.model.state_dict(), tmp)
    sink.log(f"MONAI bundle of {source.name} written to {out}: python -m monai.bundle run --config_file "
             f"{out / INFERENCE} --bundle_root {out} --dataset_dir DIR segments DIR's cases.")
    return {"bundle": str(out), "metadata": str(out / METADATA), "inference": str(out / INFERENCE),
            "weights": str(out / WEIGHTS), "readme": str(out / README)}


# ---------------------------------------------------------------------------- fine-tuning from a bundle

def _comparable(value):
    """A constructor argument as JSON holds it, case-insensitively (MONAI takes "INSTANCE" for "instance")."""
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, (list, tuple)):
        return [_comparable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _comparable(v) for k, v in value.items()}
    return value


def bundle_network(network_def: dict, source: Path) -> Tuple[dict, int, int, int]:
    """``(network config, spatial_dims, in_channels, out_channels)`` of a bundle's ``network_def``.

    InputError naming ``source`` unless it is a MONAI class of :data:`network.MONAI_CLASSES` whose every
    constructor argument (given, or MONAI's default) is what the engine gives it for that network config.
    """
    from monai.networks import nets

    classes = ", ".join(MONAI_CLASSES.values())
    hint = (f"The engine builds MONAI {classes} as AsymSeg configures them; fine-tune this bundle with MONAI's own "
            "scripts, or start from a model AsymSeg trained or exported.")
    target = str(network_def.get("_target_", "")).rsplit(".", 1)[-1]
    name = next((n for n, cls in MONAI_CLASSES.items() if cls == target), None)
    if name is None:
        raise InputError(f"{source}: network_def is {network_def.get('_target_')!r}; the engine builds MONAI "
                         f"{classes} only.", hint)
    given = {k: v for k, v in network_def.items() if not k.startswith("_")}
    coded = sorted(k for k, v in given.items() if isinstance(v, str) and v[:1] in "$@%")
    if coded:
        raise InputError(f"{source}: network_def sets {', '.join(coded)} by a reference or an expression; the engine "
                         "reads literal values only (it runs no code of a bundle).",
                         "Write the values themselves into network_def.")
    parameters = inspect.signature(getattr(nets, target)).parameters
    defaults = {k: p.default for k, p in parameters.items() if p.default is not inspect.Parameter.empty}

    def value(key):
        return given.get(key, defaults.get(key))

    try:
        dims, in_channels, out_channels = (int(given[k]) for k in ("spatial_dims", "in_channels", "out_channels"))
        config = network_config({"name": name, **{key: value(key) for key in CHOICES["network"][name]}})
        engine = network_arguments(config, in_channels, out_channels, dims)
    except InputError as exc:
        raise InputError(f"{source}: {exc.message}", hint) from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{source}: network_def lacks or mistypes {exc}.", hint) from exc
    differences = [f"{k} is not an argument of MONAI {target}" if k not in parameters else
                   f"{k} is {value(k)!r} where AsymSeg's is {engine.get(k, defaults.get(k))!r}"
                   for k in sorted(set(given) | set(engine))
                   if k not in parameters or _comparable(value(k)) != _comparable(engine.get(k, defaults.get(k)))]
    if differences:
        raise InputError(f"{source}: the engine cannot build this {target}: {'; '.join(differences)}.", hint)
    return config, dims, in_channels, out_channels


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"Cannot read {path}: {exc}", BUNDLE_HINT) from exc
    if not isinstance(data, dict):
        raise InputError(f"{path} is not a JSON object.", BUNDLE_HINT)
    return data


def _channel_names(formats: dict, side: str, count: int, generic: str) -> List[str]:
    """Names of the first input (``side`` "inputs") or output's channels from its ``channel_def``, else generic."""
    tensor = next(iter((formats.get(side) or {}).values()), None)
    names = (tensor or {}).get("channel_def") or {}
    return [str(names.get(str(i), f"{generic}{i}")) for i in range(count)]


def _target_spacing(inference: dict, dims: int) -> Optional[List[float]]:
    """The (z, y, x) spacing of a literal ``Spacingd`` in ``preprocessing`` (MONAI's pixdim is x, y, z); None
    without one."""
    transforms = (inference.get("preprocessing") or {}).get("transforms") or []
    for transform in transforms:
        if isinstance(transform, dict) and str(transform.get("_target_", "")).rsplit(".", 1)[-1] == "Spacingd":
            pixdim = transform.get("pixdim")
            pixdim = [pixdim] * dims if isinstance(pixdim, (int, float)) else pixdim
            if isinstance(pixdim, list) and all(isinstance(v, (int, float)) for v in pixdim[:dims]):
                zyx = [float(v) for v in reversed(pixdim[:dims])]
                return [1.0] * (3 - dims) + zyx
    return None


def _state_dict(path: Path) -> Dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, or a pickle with arbitrary objects (refused by weights_only)
        raise InputError(f"{path} cannot be read safely: {exc}".split("\n")[0],
                         "Other pickles are refused for safety; " + BUNDLE_HINT) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path} is not a state dict (a dictionary of tensors).", BUNDLE_HINT)
    return state


def load_bundle(folder) -> Tuple[Dict[str, torch.Tensor], dict]:
    """``(state_dict, meta)`` of a MONAI bundle folder, ``meta`` with the keys fine-tuning reads from a model file:
    ``network``, ``spatial_dims``, ``channels``, ``class_names``, ``normalization`` (from AsymSeg's
    ``metadata.json`` block, else None: planned) and ``target_spacing`` (a ``Spacingd`` in the pre-processing, else
    None: the images' own)."""
    folder = Path(folder)
    missing = [folder / name for name in (METADATA, INFERENCE, WEIGHTS) if not (folder / name).is_file()]
    if missing:
        raise InputError(f"{missing[0]} does not exist: {folder} is not a complete MONAI bundle"
                         + (f" (missing too: {', '.join(str(p) for p in missing[1:])})" if missing[1:] else "") + ".",
                         BUNDLE_HINT)
    info, inference = _read_json(folder / METADATA), _read_json(folder / INFERENCE)
    if not isinstance(inference.get("network_def"), dict):
        raise InputError(f"{folder / INFERENCE} has no network_def object.", BUNDLE_HINT)
    network, dims, in_channels, out_channels = bundle_network(inference["network_def"], folder / INFERENCE)
    formats = info.get("network_data_format") or {}
    meta = {"network": network, "spatial_dims": dims,
            "channels": _channel_names(formats, "inputs", in_channels, "channel"),
            "class_names": _channel_names(formats, "outputs", out_channels, "class"),
            "normalization": (info.get("asymseg") or {}).get("normalization"),
            "target_spacing": _target_spacing(inference, dims)}
    return _state_dict(folder / WEIGHTS), meta


def load_initial_model(path) -> Tuple[Dict[str, torch.Tensor], dict]:
    """``(state_dict, meta)`` of a job's ``initial_checkpoint``: a MONAI bundle folder (:func:`load_bundle`) or an
    AsymSeg model file (network.load_model_file)."""
    path = Path(path)
    if path.is_dir():
        return load_bundle(path)
    state, meta = load_model_file(path)
    return state["state_dict"], meta
