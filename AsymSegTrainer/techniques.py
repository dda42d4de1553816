"""Technique presets: which of the paper's terms a run uses, with METHOD.md §5 defaults.

A technique is a flat set of settings (protocol.md, "Technique settings"); a preset names
one, and a job may override any setting: ``{"preset": "asymmetric-focal", "gamma": 4}``.
Defaults are the paper's BRATS 5% row (scarce data): m = 1, gamma = 2, xi / l = 1e-5 / 10,
mixup alpha 1 / m_mix 0.2 (symmetric mixup alpha 0.2); the combinations use smaller m and
gamma because combining everything over-regularises (paper, Tables V-VII).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Union

from .errors import InputError


@dataclass(frozen=True)
class Technique:
    preset: str = "vanilla"
    symmetric: bool = False  # the symmetric baseline of every term (augmentation: every patch uses p_fg)
    margin: float = 0.0
    gamma: float = 0.0
    adversarial: bool = False
    xi: float = 1e-5
    l: float = 10.0  # noqa: E741 - the paper's name for the perturbation norm
    mixup: bool = False
    mixup_alpha: float = 1.0
    mixup_margin: float = 0.2
    augmentation: bool = False
    p_fg: float = 1.0
    p_bg: float = 0.25

    def to_dict(self) -> dict:
        return asdict(self)


_MARGIN, _FOCAL = {"margin": 1.0}, {"gamma": 2.0}
_ADV, _MIX = {"adversarial": True}, {"mixup": True}
_SYM = {"symmetric": True}
_COMBINATION = {"margin": 0.5, "gamma": 1.0, "adversarial": True, "mixup": True}

PRESETS = {
    "vanilla": {},
    "symmetric-margin": {**_MARGIN, **_SYM},
    "asymmetric-margin": _MARGIN,
    "symmetric-focal": {**_FOCAL, **_SYM},
    "asymmetric-focal": _FOCAL,
    "symmetric-adversarial": {**_ADV, **_SYM},
    "asymmetric-adversarial": _ADV,
    "symmetric-mixup": {**_MIX, **_SYM, "mixup_alpha": 0.2},
    "asymmetric-mixup": _MIX,
    "asymmetric-augmentation": {"augmentation": True},
    "symmetric-combination": {**_COMBINATION, **_SYM, "mixup_alpha": 0.2},
    "asymmetric-combination": _COMBINATION,
}
RECOMMENDED = "asymmetric-focal"  # METHOD.md §5: robust to gamma, try it first

_RANGES = {"margin": (0, None), "gamma": (0, None), "xi": (0, None), "l": (0, None), "mixup_alpha": (0, None),
           "mixup_margin": (0, 1), "p_fg": (0, 1), "p_bg": (0, 1)}


def resolve_technique(spec: Union[str, dict, None]) -> Technique:
    """A preset name or ``{"preset": NAME, <setting>: value}`` -> a validated :class:`Technique`."""
    spec = {"preset": spec} if isinstance(spec, str) else dict(spec or {})
    name = spec.pop("preset", "vanilla")
    if name not in PRESETS:
        raise InputError(f"technique.preset '{name}' is not a known preset.",
                         f"Use one of: {', '.join(PRESETS)} (recommended: {RECOMMENDED}).")
    allowed = {f.name for f in fields(Technique)} - {"preset"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise InputError(f"technique has unknown setting(s) {unknown}.", f"Known settings: {', '.join(sorted(allowed))}.")
    technique = replace(Technique(preset=name), **{**PRESETS[name], **spec})
    for key, (low, high) in _RANGES.items():
        value = getattr(technique, key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not (value >= low) \
                or (high is not None and value > high) or value != value or value == float("inf"):
            bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
            raise InputError(f"technique.{key} must be a number {bound}; got {value!r}.",
                             "Fix the value in the job's technique settings.")
    for key in ("symmetric", "adversarial", "mixup", "augmentation"):
        if not isinstance(getattr(technique, key), bool):
            raise InputError(f"technique.{key} must be true or false; got {getattr(technique, key)!r}.",
                             "Fix the value in the job's technique settings.")
    if technique.mixup and technique.mixup_alpha <= 0:
        raise InputError("technique.mixup_alpha must be > 0 when mixup is on.", "The paper uses 1 (0.2 symmetric).")
    return technique
