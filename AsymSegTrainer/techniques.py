"""Techniques: which of the paper's terms a run uses, with the settings and presets of ``protocol.json``.

A technique is a flat set of composable settings (a flag per term and its hyper-parameters;
no class per variant); a preset names one, and a job may override any setting:
``{"preset": "asymmetric-focal", "gamma": 4}``. The settings (type, default, range, label,
paper equation) and the presets live in ``protocol.json``, shared with the Slicer module;
preset values are the paper's BRATS 5% row (METHOD.md §5).
"""

from __future__ import annotations

import math
from dataclasses import asdict, field, make_dataclass
from typing import Union

from .errors import InputError
from .protocol import PRESETS, RECOMMENDED, TECHNIQUE_SETTINGS

__all__ = ["PRESETS", "RECOMMENDED", "Technique", "resolve_technique", "technique_from_name"]

_TYPES = {"bool": bool, "float": float, "choice": str}

# A frozen dataclass with one field per setting of protocol.json (``preset`` first).
Technique = make_dataclass(
    "Technique",
    [("preset", str, field(default="vanilla"))]
    + [(name, _TYPES[s["type"]], field(default=s["default"])) for name, s in TECHNIQUE_SETTINGS.items()],
    frozen=True, namespace={"to_dict": lambda self: asdict(self),
                            "__doc__": "The resolved technique of a run: its preset and every setting."})
Technique.__module__ = __name__  # make_dataclass's own ``module`` argument needs Python 3.12


def _check(name: str, value):
    """A setting's value, or an InputError naming it, its type and its range."""
    s = TECHNIQUE_SETTINGS[name]
    fix = "Fix the value in the job's technique settings."
    if s["type"] == "bool":
        if not isinstance(value, bool):
            raise InputError(f"technique.{name} must be true or false; got {value!r}.", fix)
        return value
    if s["type"] == "choice":
        if value not in s["choices"]:
            raise InputError(f"technique.{name} must be one of {s['choices']}; got {value!r}.", f"{s['tooltip']} {fix}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not s["minimum"] <= value <= s["maximum"]:
        raise InputError(f"technique.{name} must be a number in [{s['minimum']:g}, {s['maximum']:g}]; got {value!r}.",
                         f"{s['label']}: {s['tooltip']} {fix}")
    return float(value)


def resolve_technique(spec: Union[str, dict, None]) -> Technique:
    """A preset name or ``{"preset": NAME, <setting>: value}`` -> a validated :class:`Technique`."""
    spec = {"preset": spec} if isinstance(spec, str) else dict(spec or {})
    name = spec.pop("preset", "vanilla")
    if name not in PRESETS:
        raise InputError(f"technique.preset '{name}' is not a known preset.",
                         f"Use one of: {', '.join(PRESETS)} (recommended: {RECOMMENDED}).")
    unknown = sorted(set(spec) - set(TECHNIQUE_SETTINGS))
    if unknown:
        raise InputError(f"technique has unknown setting(s) {unknown}.",
                         f"Known settings: {', '.join(sorted(TECHNIQUE_SETTINGS))}.")
    values = {key: _check(key, value) for key, value in {**PRESETS[name], **spec}.items()}
    technique = Technique(preset=name, **values)
    if technique.mixup and technique.mixup_alpha <= 0:
        raise InputError("technique.mixup_alpha must be > 0 when mixup is on.", "The paper uses 1 (0.2 symmetric).")
    return technique


def technique_from_name(name: str) -> dict:
    """A preset name with optional ``+setting=value`` overrides -> the technique spec of a job.

    ``asymmetric-combination+update=sum+mixup=false`` is the combination with one summed step and no
    mixup term: the bench's way to name an ablation in ``--methods`` (values: true, false, a number or
    a word). Validated like a job's technique (InputError naming the setting).
    """
    preset, *overrides = name.split("+")
    spec = {"preset": preset}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise InputError(f"'{name}': '{item}' is not setting=value.",
                             "Write a variant as PRESET+setting=value, e.g. asymmetric-combination+update=sum.")
        spec[key] = {"true": True, "false": False}.get(text.lower(), _number_or_word(text))
    resolve_technique(spec)
    return spec


def _number_or_word(text: str):
    try:
        return float(text)
    except ValueError:
        return text
