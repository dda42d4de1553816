"""Networks (MONAI ``UNet`` / ``DynUNet`` / ``SegResNet``) and model files that carry everything inference needs.

A model file is a ``torch.save`` dictionary of tensors and plain values, loaded with
``weights_only=True`` (never unpickling arbitrary objects): ``format``, ``version``,
``meta`` (a JSON string: classes, rarity, channels, normalisation, spacing, network, patch
size, technique, versions, seed), ``state_dict``, ``optimizer``, ``iteration``.
"""

from __future__ import annotations

import copy
import json
import math
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
MONAI_CLASSES = {"unet": "UNet", "dynunet": "DynUNet", "segresnet": "SegResNet"}
"""The class in ``monai.networks.nets`` of each ``network.name``."""
SEGRESNET_GROUPS = 8  # MONAI SegResNet's default normalisation: GroupNorm with 8 groups
SEGRESNET_EXAMPLE = "E.g. blocks_down [1, 2, 2, 4] with blocks_up [1, 1, 1] (the patch halved three times)."


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _block_counts(config: dict, key: str) -> list:
    """``config[key]``, SegResNet's residual blocks per level, as a list of positive integers."""
    value = config[key]
    if not isinstance(value, (list, tuple)) or not all(_is_int(b) and b >= 1 for b in value):
        raise InputError(f"network.{key} must be a list of positive integers (residual blocks per level); got "
                         f"{value!r}.", SEGRESNET_EXAMPLE)
    return list(value)


def _check_segresnet(config: dict) -> dict:
    """``config`` with its block lists as lists, once MONAI SegResNet can be built from it: filters that its group
    normalisation divides, and one up level fewer than down levels (each down level after the first halves the
    patch; each up level doubles it back)."""
    filters = config["init_filters"]
    if not _is_int(filters) or filters < SEGRESNET_GROUPS or filters % SEGRESNET_GROUPS:
        raise InputError(f"network.init_filters must be a positive multiple of {SEGRESNET_GROUPS} (SegResNet "
                         f"normalises its features in {SEGRESNET_GROUPS} groups); got {filters!r}.",
                         "E.g. 8, 16 or 32.")
    down = _block_counts(config, "blocks_down")
    if not down:
        raise InputError("network.blocks_down is empty; SegResNet needs at least one level.", SEGRESNET_EXAMPLE)
    up = _block_counts(config, "blocks_up")
    if len(up) != len(down) - 1:
        raise InputError(f"network.blocks_up has {len(up)} entries and network.blocks_down {len(down)}; SegResNet "
                         "needs one blocks_up entry fewer than blocks_down (one up level per down level after the "
                         "first).", SEGRESNET_EXAMPLE)
    return {**config, "blocks_down": down, "blocks_up": up}


def network_config(config: Optional[dict]) -> dict:
    """Fill defaults (protocol.json) and validate a job's ``network`` object."""
    config = dict(config or {})
    name = config.setdefault("name", DEFAULT_NETWORK)
    if name not in CHOICES["network"]:
        raise InputError(f"network.name '{name}' is not supported.",
                         f"Use {', '.join(f'{n!r} (MONAI {c})' for n, c in MONAI_CLASSES.items())}.")
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
    elif name == "segresnet":
        merged = _check_segresnet(merged)
    return merged


def downsampling_factor(config: dict) -> int:
    """Patch sizes must be divisible by this: the product of the strides (UNet, DynUNet); SegResNet halves the
    patch once per down level after the first."""
    config = network_config(config)
    if config["name"] == "segresnet":
        return 2 ** (len(config["blocks_down"]) - 1)
    return math.prod(int(s) for s in config["strides"])


def network_arguments(config: Optional[dict], in_channels: int, num_classes: int, spatial_dims: int = 3) -> dict:
    """The constructor arguments the engine gives the network's MONAI class (:data:`MONAI_CLASSES`); every other
    argument keeps MONAI's default. Plain JSON values: with ``_target_`` this is a MONAI bundle's ``network_def``."""
    config = network_config(config)
    common = {"spatial_dims": spatial_dims, "in_channels": in_channels, "out_channels": num_classes}
    if config["name"] == "unet":
        return {**common, "channels": config["channels"], "strides": config["strides"],
                "num_res_units": config["num_res_units"]}
    if config["name"] == "segresnet":
        return {**common, "init_filters": config["init_filters"], "blocks_down": config["blocks_down"],
                "blocks_up": config["blocks_up"]}
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
