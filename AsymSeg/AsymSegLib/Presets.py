"""The technique presets the Technique panel offers, from the engine's ``protocol.json``.

The engine owns the meaning, defaults and ranges of every preset and setting; this file only
turns them into what the panel presents: a label, a one-line description and the numeric
settings a preset uses (the advanced fields the panel shows) with their defaults. The
on/off terms (``adversarial``, ``mixup``, ...) are fixed by the preset and never shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .Protocol import protocol

_TECHNIQUE = protocol()["technique"]
RECOMMENDED: str = _TECHNIQUE["recommended"]


@dataclass(frozen=True)
class Setting:
    key: str          # the protocol's technique setting name
    label: str
    default: float
    minimum: float
    maximum: float
    decimals: int
    tooltip: str
    unit: str = ""
    equation: str = ""

    @property
    def fullTooltip(self) -> str:
        return f"{self.tooltip} ({self.equation})" if self.equation else self.tooltip


SETTINGS = {s["name"]: Setting(s["name"], s["label"], float(s["default"]), float(s["minimum"]), float(s["maximum"]),
                               int(s["decimals"]), s["tooltip"], s.get("unit", ""), s.get("equation", ""))
            for s in _TECHNIQUE["settings"] if s["type"] == "float"}


@dataclass(frozen=True)
class Preset:
    name: str
    label: str
    description: str
    defaults: dict = field(default_factory=dict)  # setting key -> default, for the numeric settings it uses

    @property
    def recommended(self) -> bool:
        return self.name == RECOMMENDED

    @property
    def settingKeys(self) -> list[str]:
        return list(self.defaults)

    def displayLabel(self) -> str:
        return f"{self.label} (recommended)" if self.recommended else self.label


PRESETS = {p["name"]: Preset(p["name"], p["label"], p["description"],
                             {k: float(v) for k, v in p["settings"].items() if k in SETTINGS})
           for p in _TECHNIQUE["presets"]}


def preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"Unknown technique preset '{name}'. Known: {', '.join(PRESETS)}.") from None


def techniqueSpec(name: str, values: dict | None = None) -> dict:
    """The job's ``technique`` object: the preset plus the explicit value of each setting it uses.

    ``values`` holds what the panel shows (any keys); only the preset's own settings are sent,
    so a hidden field never changes a run.
    """
    p = preset(name)
    values = values or {}
    spec = {"preset": p.name}
    for key, default in p.defaults.items():
        value = values.get(key, default)
        s = SETTINGS[key]
        if not (s.minimum <= float(value) <= s.maximum):
            raise ValueError(f"{s.label} must lie in [{s.minimum:g}, {s.maximum:g}]; got {value}.")
        spec[key] = float(value)
    return spec
