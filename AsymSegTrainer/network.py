"""Networks (MONAI ``UNet`` / ``DynUNet``) and model files that carry everything inference needs.

A model file is a ``torch.save`` dictionary of tensors and plain values, loaded with
``weights_only=True`` (never unpickling arbitrary objects): ``format``, ``version``,
``meta`` (a JSON string: classes, rarity, channels, normalisation, spacing, network, patch
size, technique, versions, seed), ``state_dict``, ``optimizer``, ``iteration``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import nn

from .errors import InputError
from .files import atomic_output
from .protocol import CHOICES

MODEL_FORMAT = "asymseg-model"
MODEL_VERSION = 1
DEFAULT_NETWORK = "unet"  # a job's network without a name


def network_config(config: Optional[dict]) -> dict:
    """Fill defaults (protocol.json) and validate a job's ``network`` object."""
    config = dict(config or {})
    name = config.setdefault("name", DEFAULT_NETWORK)
    if name not in CHOICES["network"]:
        raise InputError(f"network.name '{name}' is not supported.",
                         "Use 'unet' (MONAI UNet) or 'dynunet' (MONAI DynUNet).")
    defaults = copy.deepcopy(CHOICES["network"][name])
    unknown = sorted(set(config) - set(defaults) - {"name"})
    if unknown:
        raise InputError(f"network has unknown setting(s) {unknown} for '{name}'.",
                         f"Known settings of '{name}': {', '.join(sorted(defaults))}.")
    merged = {"name": name, **defaults, **config}
    if name == "unet":
        if len(merged["channels"]) != len(merged["strides"]) + 1:
            raise InputError(f"network.channels has {len(merged['channels'])} entries and network.strides "
                             f"{len(merged['strides'])}; UNet needs one more channel entry than strides.",
                             "E.g. channels [16, 32, 64, 128] with strides [2, 2, 2].")
    return merged


def downsampling_factor(config: dict) -> int:
    """Patch sizes must be divisible by this (product of the strides)."""
    factor = 1
    for s in network_config(config)["strides"]:
        factor *= int(s)
    return factor


MONAI_CLASSES = {"unet": "UNet", "dynunet": "DynUNet"}
"""The class in ``monai.networks.nets`` of each ``network.name``."""


def network_arguments(config: Optional[dict], in_channels: int, num_classes: int, spatial_dims: int = 3) -> dict:
    """The constructor arguments the engine gives the network's MONAI class (:data:`MONAI_CLASSES`); every other
    argument keeps MONAI's default. Plain JSON values: with ``_target_`` this is a MONAI bundle's ``network_def``."""
    config = network_config(config)
    common = {"spatial_dims": spatial_dims, "in_channels": in_channels, "out_channels": num_classes}
    if config["name"] == "unet":
        return {**common, "channels": config["channels"], "strides": config["strides"],
                "num_res_units": config["num_res_units"]}
    strides = config["strides"]
    return {**common, "kernel_size": [3] * len(strides), "strides": strides, "upsample_kernel_size": strides[1:],
            "filters": config["filters"], "res_block": True}


def build_network(config: Optional[dict], in_channels: int, num_classes: int, spatial_dims: int = 3) -> nn.Module:
    from monai.networks import nets

    monai_class = getattr(nets, MONAI_CLASSES[network_config(config)["name"]])
    return monai_class(**network_arguments(config, in_channels, num_classes, spatial_dims))


def save_model(path: Path, model: nn.Module, meta: dict, optimizer: Optional[torch.optim.Optimizer] = None,
               iteration: int = 0) -> None:
    """Write atomically (files.atomic_output): the old file survives any failure."""
    path = Path(path)
    state = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "meta": json.dumps(meta),
             "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
             "optimizer": optimizer.state_dict() if optimizer is not None else {}, "iteration": int(iteration)}
    with atomic_output(path) as tmp:
        torch.save(state, tmp)


def load_model_file(path: Path) -> Tuple[dict, dict]:
    """Return ``(state, meta)`` of a model file; a clear InputError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Model file {path} does not exist.", "Give the path of a model_best.pt / model_last.pt.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, or a pickle with arbitrary objects (refused by weights_only)
        raise InputError(f"Model file {path} cannot be read safely: {exc}".split("\n")[0],
                         "Use a model written by AsymSeg; other pickles are refused for safety.") from exc
    if not isinstance(state, dict) or state.get("format") != MODEL_FORMAT:
        raise InputError(f"{path} is not an AsymSeg model file.", "Use a model_best.pt / model_last.pt from a training run.")
    if state.get("version", 0) > MODEL_VERSION:
        raise InputError(f"{path} was written by a newer AsymSeg (model version {state['version']}).",
                         "Update AsymSegTrainer.")
    return state, json.loads(state["meta"])


def update_model_meta(path: Path, **fields) -> None:
    """Add ``fields`` to the meta of the model file ``path``, atomically; weights and optimiser state stay."""
    state, meta = load_model_file(Path(path))
    state["meta"] = json.dumps({**meta, **fields})
    with atomic_output(path) as tmp:
        torch.save(state, tmp)


def load_weights(model: nn.Module, state_dict: dict) -> list:
    """Load matching weights; return the names left at their fresh initialisation (shape differs).

    Fine-tuning to another class count changes only the output layer's shape, so those
    tensors are re-initialised and everything else is kept.
    """
    own = model.state_dict()
    unknown = sorted(set(state_dict) - set(own))
    if unknown:
        raise InputError(f"The initial model's network does not match this job's network (unexpected weights "
                         f"{unknown[:3]}...).", "Use the same network settings as the model was trained with.")
    reinitialised = [k for k, v in own.items() if k not in state_dict or state_dict[k].shape != v.shape]
    model.load_state_dict({k: v for k, v in state_dict.items() if k not in reinitialised}, strict=False)
    return reinitialised
