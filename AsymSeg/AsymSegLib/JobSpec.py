"""Training settings (the Technique panel) and the job spec they become (docs/protocol.md).

Qt-free. ``TrainingSettings`` is what the panel edits, with the engine's job defaults and
ranges (``protocol.json``); ``buildJob`` combines it with an ``ExportResult`` into the job
dictionary; ``writeJob`` writes ``job.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .Presets import RECOMMENDED, techniqueSpec
from .Protocol import jobDefault, jobFields, protocol

DEVICE_AUTO = jobDefault("device")


def _outOfRange(name: str, value: float) -> bool:
    """True when ``value`` is outside the engine's range of job field ``name``."""
    spec = jobFields()[name]
    low, high = spec.get("minimum"), spec.get("maximum")
    tooLow = low is not None and (value <= low if spec.get("minimum_open") else value < low)
    return tooLow or (high is not None and value > high)


@dataclass
class TrainingSettings:
    preset: str = RECOMMENDED
    technique: dict = field(default_factory=dict)  # values shown for the preset's settings
    iterations: int = jobDefault("iterations")
    patchSize: tuple = tuple(jobDefault("patch_size"))  # (z, y, x) voxels
    batchSize: int = jobDefault("batch_size")
    learningRate: float = jobDefault("learning_rate")
    validationInterval: int = jobDefault("validation_interval")
    device: str = DEVICE_AUTO
    initialModel: str = ""
    loss: str = jobDefault("loss")
    network: Optional[dict] = None                 # engine default when None
    extra: dict = field(default_factory=dict)      # further job keys, passed through

    def downsamplingFactor(self) -> int:
        """Product of the network's strides (the engine's default network when none is set)."""
        network = self.network or jobDefault("network")
        defaults = protocol()["job"]["choices"]["network"][network.get("name", jobDefault("network")["name"])]
        strides = network.get("strides", defaults["strides"])
        factor = 1
        for stride in strides:
            factor *= int(stride if isinstance(stride, int) else max(stride))
        return max(factor, 1)

    def problems(self) -> list[str]:
        found = []
        if _outOfRange("iterations", self.iterations):
            found.append("Iterations must be at least 1.")
        if len(self.patchSize) != 3 or any(int(p) < 1 for p in self.patchSize):
            found.append("Patch size needs three positive sizes (z, y, x).")
        else:
            factor = self.downsamplingFactor()
            bad = [int(p) for p in self.patchSize if int(p) != 1 and int(p) % factor]
            if bad:
                found.append(f"Patch sizes {bad} are not multiples of {factor} (the network halves the patch "
                             f"{factor.bit_length() - 1} times); use 1 for z on 2D images.")
        if _outOfRange("batch_size", self.batchSize):
            found.append("Batch size must be at least 1.")
        if _outOfRange("learning_rate", self.learningRate):
            spec = jobFields()["learning_rate"]
            found.append(f"Learning rate must lie in ({spec['minimum']:g}, {spec['maximum']:g}].")
        if self.initialModel and not Path(self.initialModel).is_file():
            found.append(f"Initial model file not found: {self.initialModel}")
        try:
            techniqueSpec(self.preset, self.technique)
        except ValueError as error:
            found.append(str(error))
        return found


def buildJob(export, settings: TrainingSettings, output: str = "out") -> dict:
    """The job spec for ``export`` (an ``ExportResult``) trained with ``settings``."""
    problems = settings.problems()
    if problems:
        raise ValueError(" ".join(problems))
    job = {
        "format": protocol()["job"]["format"],
        "version": protocol()["job"]["version"],
        "output": output,
        "channels": list(export.channels),
        "cases": [{"id": c.id, "images": list(c.images), "label": c.label, "role": c.role} for c in export.cases],
        "classes": {name: list(values) for name, values in export.classes.items()},
        "unlisted_labels": "error",
        "rarity": dict(export.rarity),
        "technique": techniqueSpec(settings.preset, settings.technique),
        "loss": settings.loss,
        "patch_size": [int(p) for p in settings.patchSize],
        "batch_size": int(settings.batchSize),
        "iterations": int(settings.iterations),
        "learning_rate": float(settings.learningRate),
        "validation_interval": max(1, min(int(settings.validationInterval), int(settings.iterations))),
        "device": settings.device or DEVICE_AUTO,
        "initial_checkpoint": os.fspath(Path(settings.initialModel).resolve()) if settings.initialModel else None,
        "logit_statistics": True,
    }
    if settings.network:
        job["network"] = dict(settings.network)
    job.update(settings.extra)
    return job


def writeJob(job: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(job, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path
