"""The engine's training plan (the ``plan`` event, docs/protocol.md) as the panel shows it.

Qt-free. The engine plans every setting a job leaves out from the training cases and the
device (``python -m AsymSegTrainer plan``, and ``train`` before it trains); the plan says,
per job field, the value, where it comes from (``plan``, ``user``, ``initial model``) and
why, plus the device and the estimated training time (the dataset fingerprint it also
carries is not shown). ``TrainingPlan.fromDict`` reads it
leniently (a missing or malformed part shows as absent, never an exception) so a newer
engine's plan still displays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .Events import optionalNumber

# job field -> label, in the order the panel lists them; fields the engine adds later follow
FIELD_LABELS = {
    "target_spacing": "Target spacing",
    "patch_size": "Patch size",
    "batch_size": "Batch size",
    "iterations": "Iterations",
    "learning_rate": "Learning rate",
    "validation_interval": "Validation interval",
    "network": "Network",
    "normalization": "Normalisation",
}
SOURCE_LABELS = {"plan": "planned", "user": "set by you"}


@dataclass(frozen=True)
class PlanRow:
    """One setting of a plan, as text: a row of the plan table."""

    name: str       # the job field
    label: str
    value: str
    source: str
    reason: str


@dataclass
class TrainingPlan:
    settings: dict = field(default_factory=dict)   # job field -> value
    reasons: dict = field(default_factory=dict)    # job field -> why
    source: dict = field(default_factory=dict)     # job field -> plan / user / initial model
    device: dict = field(default_factory=dict)     # type, name, cores, memory_gib
    stepSeconds: Optional[float] = None
    estimatedMinutes: Optional[float] = None
    timeBudgetMinutes: Optional[float] = None

    @classmethod
    def fromDict(cls, data) -> "TrainingPlan":
        data = data if isinstance(data, dict) else {}
        return cls(settings=_dict(data.get("settings")), reasons=_dict(data.get("reasons")),
                   source=_dict(data.get("source")), device=_dict(data.get("device")),
                   stepSeconds=optionalNumber(data.get("step_seconds")),
                   estimatedMinutes=optionalNumber(data.get("estimated_minutes")),
                   timeBudgetMinutes=optionalNumber(data.get("time_budget_minutes")))

    def rows(self) -> list[PlanRow]:
        """The settings, known fields first in ``FIELD_LABELS`` order."""
        ordered = [name for name in FIELD_LABELS if name in self.settings]
        ordered += [name for name in self.settings if name not in FIELD_LABELS]
        return [PlanRow(name, FIELD_LABELS.get(name, name.replace("_", " ").capitalize()),
                        formatSetting(name, self.settings[name]),
                        SOURCE_LABELS.get(str(self.source.get(name, "")), str(self.source.get(name, ""))),
                        str(self.reasons.get(name) or "")) for name in ordered]

    def deviceText(self) -> str:
        """E.g. 'cuda: NVIDIA H200, 139.8 GiB' or 'cpu: x86_64, 2 cores'."""
        if not self.device:
            return "an unknown device"
        memory = optionalNumber(self.device.get("memory_gib"))
        details = [str(self.device.get("name") or "")]
        details.append(f"{memory:g} GiB" if memory is not None else f"{self.device.get('cores', '?')} cores")
        return f"{self.device.get('type', '?')}: " + ", ".join(d for d in details if d)

    def summary(self) -> str:
        """The estimated training time, the budget and the device, in one sentence."""
        budget = f" (budget {self.timeBudgetMinutes:g} min)" if self.timeBudgetMinutes is not None else ""
        time = (f"about {self.estimatedMinutes:g} min of training{budget}" if self.estimatedMinutes is not None
                else "training time not estimated")
        step = f", {self.stepSeconds:.2f} s per iteration" if self.stepSeconds is not None else ""
        return f"Plan: {time} on {self.deviceText()}{step}."


def formatSetting(name: str, value) -> str:
    """A plan value as text: spacings in mm, patch sizes in voxels, objects as 'name, key value, ...'."""
    if name == "target_spacing" and value == "native":
        return "native (no resampling)"
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
        unit = {"target_spacing": " mm", "patch_size": " voxels"}.get(name, "")
        return " x ".join(f"{v:g}" for v in value) + unit
    if isinstance(value, dict):
        head = [str(value[key]) for key in ("name", "mode") if key in value]
        rest = [f"{key} {_plain(v)}" for key, v in value.items() if key not in ("name", "mode") and v is not None]
        return ", ".join(head + rest)
    return _plain(value)


def _plain(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(_plain(v) for v in value) + "]"
    return str(value)


def _dict(value) -> dict:
    return dict(value) if isinstance(value, dict) else {}
