"""The technique presets the Technique panel offers (METHOD.md §5, protocol.md "Technique settings").

The engine owns the meaning of every preset; this table only says how to present them: a
label, a one-line description, which hyper-parameters the preset uses (the advanced fields
the panel shows) and their defaults, which mirror the engine's (a test compares them with
``AsymSegTrainer.techniques`` without the module ever importing the engine).
"""

from __future__ import annotations

from dataclasses import dataclass, field

RECOMMENDED = "asymmetric-focal"


@dataclass(frozen=True)
class Setting:
    key: str          # the protocol's technique setting name
    label: str
    default: float
    minimum: float
    maximum: float
    decimals: int
    tooltip: str


SETTINGS = {s.key: s for s in (
    Setting("margin", "Margin m", 1.0, 0.0, 10.0, 2,
            "Large-margin loss (eq. 7): subtracted from the true-class logit of rare voxels."),
    Setting("gamma", "Focal gamma", 2.0, 0.0, 10.0, 2,
            "Focal exponent (eq. 11): attenuates the loss of well-represented classes only."),
    Setting("xi", "Adversarial probe xi", 1e-5, 0.0, 1.0, 7,
            "Size of the random probe of the power iteration (eq. 14)."),
    Setting("l", "Adversarial norm l", 10.0, 0.0, 1000.0, 1,
            "L2 norm of the adversarial perturbation (paper: 10 for BRATS, 50-100 for KiTS)."),
    Setting("mixup_alpha", "Mixup alpha", 1.0, 0.0, 10.0, 2,
            "Beta(alpha, alpha) for the mixing weight (1 asymmetric, 0.2 symmetric)."),
    Setting("mixup_margin", "Mixup margin m_mix", 0.2, 0.0, 1.0, 2,
            "A mixed voxel keeps the rare label only if that sample's weight exceeds m_mix (eq. 19)."),
    Setting("p_fg", "Augment rare-centred patches", 1.0, 0.0, 1.0, 2,
            "Probability of augmenting a patch centred on a rare class (eq. 21)."),
    Setting("p_bg", "Augment other patches", 0.25, 0.0, 1.0, 2,
            "Probability of augmenting any other patch (paper: 0-50%)."),
)}


@dataclass(frozen=True)
class Preset:
    name: str
    label: str
    description: str
    defaults: dict = field(default_factory=dict)  # setting key -> default, for the settings it uses

    @property
    def recommended(self) -> bool:
        return self.name == RECOMMENDED

    @property
    def settingKeys(self) -> list[str]:
        return list(self.defaults)

    def displayLabel(self) -> str:
        return f"{self.label} (recommended)" if self.recommended else self.label


_MARGIN = {"margin": 1.0}
_FOCAL = {"gamma": 2.0}
_ADV = {"xi": 1e-5, "l": 10.0}
_COMB = {"margin": 0.5, "gamma": 1.0, "xi": 1e-5, "l": 10.0, "mixup_margin": 0.2}

PRESETS = {p.name: p for p in (
    Preset("asymmetric-focal", "Asymmetric focal loss",
           "Focal loss that attenuates only the well-represented classes; robust to gamma. Try it first.",
           dict(_FOCAL)),
    Preset("vanilla", "Vanilla (no technique)", "Plain cross-entropy: the baseline that over-fits rare classes."),
    Preset("asymmetric-margin", "Asymmetric large margin",
           "Pushes rare-class logits away from the decision boundary; sensitive to m.", dict(_MARGIN)),
    Preset("asymmetric-adversarial", "Asymmetric adversarial training",
           "Adversarial perturbations computed on rare-class voxels only.", dict(_ADV)),
    Preset("asymmetric-mixup", "Asymmetric mixup",
           "Mixup that keeps the rare label of a mixed voxel.", {"mixup_alpha": 1.0, "mixup_margin": 0.2}),
    Preset("asymmetric-augmentation", "Asymmetric augmentation",
           "Always augments rare-centred patches, other patches less often.", {"p_fg": 1.0, "p_bg": 0.25}),
    Preset("asymmetric-combination", "Asymmetric combination",
           "Margin + focal + adversarial + mixup with smaller m and gamma.", dict(_COMB, mixup_alpha=1.0)),
    Preset("symmetric-margin", "Symmetric large margin (baseline)",
           "The paper's symmetric counterpart: margin for every class.", dict(_MARGIN)),
    Preset("symmetric-focal", "Symmetric focal loss (baseline)",
           "The paper's symmetric counterpart: every class attenuated.", dict(_FOCAL)),
    Preset("symmetric-adversarial", "Symmetric adversarial training (baseline)",
           "Adversarial perturbations from all voxels.", dict(_ADV)),
    Preset("symmetric-mixup", "Symmetric mixup (baseline)",
           "Classic mixup with soft labels.", {"mixup_alpha": 0.2}),
    Preset("symmetric-combination", "Symmetric combination (baseline)",
           "All symmetric terms together.", dict(_COMB, mixup_alpha=0.2)),
)}


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
            raise ValueError(f"{s.label} must lie in [{s.minimum}, {s.maximum}]; got {value}.")
        spec[key] = float(value)
    return spec
