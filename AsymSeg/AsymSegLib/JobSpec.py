"""Training settings (the Technique panel) and the job spec they become (protocol.md, version 1).

Qt-free. ``TrainingSettings`` is what the panel edits; ``buildJob`` combines it with an
``ExportResult`` into the job dictionary; ``writeJob`` writes ``job.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .Presets import RECOMMENDED, techniqueSpec

DEVICE_AUTO = "auto"


@dataclass
class TrainingSettings:
    preset: str = RECOMMENDED
    technique: dict = field(default_factory=dict)  # values shown for the preset's settings
    iterations: int = 1000
    patchSize: tuple = (48, 48, 48)                 # (z, y, x) voxels
    batchSize: int = 4
    learningRate: float = 3e-4
    validationInterval: int = 100
    device: str = DEVICE_AUTO
    initialModel: str = ""
    loss: str = "ce"
    network: Optional[dict] = None                 # engine default when None
    extra: dict = field(default_factory=dict)      # further job keys, passed through

    def downsamplingFactor(self) -> int:
        """Product of the network's strides (the engine's default UNet: 2 x 2 x 2 = 8)."""
        strides = (self.network or {}).get("strides", [2, 2, 2])
        factor = 1
        for stride in strides:
            factor *= int(stride if isinstance(stride, int) else max(stride))
        return max(factor, 1)

    def problems(self) -> list[str]:
        found = []
        if self.iterations < 1:
            found.append("Iterations must be at least 1.")
        if len(self.patchSize) != 3 or any(int(p) < 1 for p in self.patchSize):
            found.append("Patch size needs three positive sizes (z, y, x).")
        else:
            factor = self.downsamplingFactor()
            bad = [int(p) for p in self.patchSize if int(p) != 1 and int(p) % factor]
            if bad:
                found.append(f"Patch sizes {bad} are not multiples of {factor} (the network halves the patch "
                             f"{factor.bit_length() - 1} times); use 1 for z on 2D images.")
        if self.batchSize < 1:
            found.append("Batch size must be at least 1.")
        if not (0 < self.learningRate < 1):
            found.append("Learning rate must lie in (0, 1).")
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
        "format": "asymseg-job",
        "version": 1,
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
