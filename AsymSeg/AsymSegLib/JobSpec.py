"""Training settings (the Technique panel) and the job spec they become (docs/protocol.md).

Qt-free. ``TrainingSettings`` is what the panel edits, with the engine's job defaults and
ranges (``protocol.json``). The settings the engine plans from the data and the device
(``PLANNED_FIELDS``) are None, "auto", unless the user sets them: ``buildJob`` leaves an
auto setting out of the job, so the engine plans it, and writes a set one, which the engine
keeps (its plan says ``source: user``). ``buildJob`` combines the settings with an
``ExportResult`` into the job dictionary; ``writeJob`` writes ``job.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from .Presets import RECOMMENDED, techniqueSpec
from .Protocol import jobDefault, jobFields, protocol

DEVICE_AUTO = jobDefault("device")
NATIVE_SPACING = "native"  # target_spacing: train on the images' own grid (no resampling)
# job fields the engine plans when the job leaves them out (protocol.json: default null, "planned")
PLANNED_FIELDS = ("target_spacing", "patch_size", "batch_size", "network", "normalization", "iterations",
                  "learning_rate", "validation_interval")


def _outOfRange(name: str, value: float) -> bool:
    """True when ``value`` is outside the engine's range of job field ``name``."""
    spec = jobFields()[name]
    low, high = spec.get("minimum"), spec.get("maximum")
    tooLow = low is not None and (value <= low if spec.get("minimum_open") else value < low)
    return tooLow or (high is not None and value > high)


def _rangeText(name: str) -> str:
    """The engine's range of job field ``name`` in words: 'at least 1', 'in (0, 1]'."""
    spec = jobFields()[name]
    low, high, isOpen = spec.get("minimum"), spec.get("maximum"), spec.get("minimum_open")
    if high is None:
        return f"{'above' if isOpen else 'at least'} {low:g}"
    return f"in {'(' if isOpen else '['}{low:g}, {high:g}]"


# (job field, TrainingSettings attribute, label) of the numbers checked against the engine's range
_RANGED = (("iterations", "iterations", "Iterations"), ("batch_size", "batchSize", "Batch size"),
           ("learning_rate", "learningRate", "Learning rate"),
           ("validation_interval", "validationInterval", "Validation interval"),
           ("time_budget_minutes", "timeBudgetMinutes", "Time budget (minutes)"))


@dataclass
class TrainingSettings:
    """The panel's training settings; None in a planned setting means auto (the engine plans it)."""

    preset: str = RECOMMENDED
    technique: dict = field(default_factory=dict)  # values shown for the preset's settings
    iterations: Optional[int] = None                # auto: fitted to timeBudgetMinutes
    patchSize: Optional[tuple] = None               # (z, y, x) voxels
    batchSize: Optional[int] = None
    learningRate: Optional[float] = None
    validationInterval: Optional[int] = None
    targetSpacing: Union[None, str, tuple] = None   # auto, NATIVE_SPACING or (z, y, x) mm
    timeBudgetMinutes: float = jobDefault("time_budget_minutes")  # what planned iterations are fitted to
    earlyStopping: bool = jobDefault("early_stopping")
    device: str = DEVICE_AUTO
    initialModel: str = ""
    loss: str = jobDefault("loss")
    network: Optional[dict] = None                  # planned when None
    extra: dict = field(default_factory=dict)       # further job keys, passed through

    def downsamplingFactor(self) -> int:
        """What a set patch size must be a multiple of (the engine checks it): the product of the strides (UNet,
        DynUNet), or 2 per down level after the first (SegResNet); without a network, the engine's default one."""
        choices = protocol()["job"]["choices"]["network"]
        network = self.network or {}
        defaults = choices.get(network.get("name", next(iter(choices))), {})
        if "blocks_down" in defaults:
            return 2 ** max(len(network.get("blocks_down", defaults["blocks_down"])) - 1, 0)
        strides = network.get("strides", defaults.get("strides", []))
        factor = 1
        for stride in strides:
            factor *= int(stride if isinstance(stride, int) else max(stride))
        return max(factor, 1)

    def problems(self) -> list[str]:
        """What the engine would refuse in the set values (auto ones are the engine's to choose)."""
        found = [f"{label} must be {_rangeText(name)}." for name, attribute, label in _RANGED
                 if getattr(self, attribute) is not None and _outOfRange(name, getattr(self, attribute))]
        if self.patchSize is not None:
            if len(self.patchSize) != 3 or any(int(p) < 1 for p in self.patchSize):
                found.append("Patch size needs three positive sizes (z, y, x), or auto for all three.")
            else:
                factor = self.downsamplingFactor()
                bad = [int(p) for p in self.patchSize if int(p) != 1 and int(p) % factor]
                if bad:
                    found.append(f"Patch sizes {bad} are not multiples of {factor} (the network halves the patch "
                                 f"{factor.bit_length() - 1} times); use 1 for z on 2D images.")
        spacing = self.targetSpacing
        if isinstance(spacing, str):
            if spacing != NATIVE_SPACING:
                found.append(f"Target spacing '{spacing}' is unknown: use auto, {NATIVE_SPACING} or three spacings.")
        elif spacing is not None and (len(spacing) != 3 or any(float(s) <= 0 for s in spacing)):
            found.append("Target spacing needs three positive spacings in mm (z, y, x).")
        if self.initialModel and not Path(self.initialModel).is_file():
            found.append(f"Initial model file not found: {self.initialModel}")
        try:
            techniqueSpec(self.preset, self.technique)
        except ValueError as error:
            found.append(str(error))
        return found

    def plannedFields(self) -> dict:
        """The planned job fields the user set (auto ones are absent), as job values; the validation
        interval is at most the iterations when both are set."""
        spacing = self.targetSpacing
        interval = self.validationInterval
        if interval is not None and self.iterations is not None:
            interval = max(1, min(int(interval), int(self.iterations)))
        values = {
            "target_spacing": spacing if spacing is None or isinstance(spacing, str) else [float(s) for s in spacing],
            "patch_size": None if self.patchSize is None else [int(p) for p in self.patchSize],
            "batch_size": None if self.batchSize is None else int(self.batchSize),
            "network": None if not self.network else dict(self.network),
            "iterations": None if self.iterations is None else int(self.iterations),
            "learning_rate": None if self.learningRate is None else float(self.learningRate),
            "validation_interval": None if interval is None else int(interval),
        }
        return {name: values[name] for name in PLANNED_FIELDS if values.get(name) is not None}


def buildJob(export, settings: TrainingSettings, output: str = "out") -> dict:
    """The job spec for ``export`` (an ``ExportResult``) trained with ``settings``; auto settings are left out."""
    problems = settings.problems()
    if problems:
        raise ValueError(" ".join(problems))
    job = {
        "format": protocol()["job"]["format"],
        "version": protocol()["job"]["version"],
        "output": output,
        "channels": list(export.channels),
        "cases": [c.jobCase() for c in export.cases],
        "classes": {name: list(values) for name, values in export.classes.items()},
        "unlisted_labels": "error",
        "rarity": dict(export.rarity),
        "technique": techniqueSpec(settings.preset, settings.technique),
        "loss": settings.loss,
        **settings.plannedFields(),
        "time_budget_minutes": float(settings.timeBudgetMinutes),
        "early_stopping": bool(settings.earlyStopping),
        "device": settings.device or DEVICE_AUTO,
        "initial_checkpoint": os.fspath(Path(settings.initialModel).resolve()) if settings.initialModel else None,
        "logit_statistics": True,
    }
    job.update(settings.extra)
    return job


def writeJob(job: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(job, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path
