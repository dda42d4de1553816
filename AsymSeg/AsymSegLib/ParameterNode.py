"""The module's parameter node: what a saved scene restores in the panels.

``AsymSegParameters`` lists the fields (type hints and defaults). Inside Slicer (>= 5.4)
``parameterNodeClass()`` wraps it with ``slicer.parameterNodeWrapper`` so the widgets whose
``SlicerParameterName`` dynamic property names a field are bound with ``connectGui``.
``settingsFromParameters`` turns any object with these fields into ``TrainingSettings``
(tested with a plain instance; slicer-core has no parameter node wrapper). The case table is
stored in the same node by ``CaseStore``. Machine-specific choices (device, folders, model
paths) are not here but in ``qt.QSettings`` (the widget).

No ``from __future__ import annotations`` here: the wrapper reads real type objects.
"""

import typing

from .JobSpec import TrainingSettings
from .Presets import RECOMMENDED


class AsymSegParameters:
    """Fields and defaults of the parameter node (the Technique panel and the class rarity)."""

    preset: str = RECOMMENDED
    margin: float = 1.0
    gamma: float = 2.0
    xi: float = 1e-5
    l: float = 10.0  # noqa: E741 - the paper's symbol
    mixupAlpha: float = 1.0
    mixupMargin: float = 0.2
    pFg: float = 1.0
    pBg: float = 0.25
    iterations: int = 1000
    patchZ: int = 48
    patchY: int = 48
    patchX: int = 48
    batchSize: int = 4
    learningRate: float = 3e-4
    validationInterval: int = 100
    rarityJson: str = "{}"   # class name -> rarity, as JSON (restored onto the Classes panel)
    lastModel: str = ""      # model of the last finished training in this scene


# protocol technique setting -> parameter field
TECHNIQUE_FIELDS = {"margin": "margin", "gamma": "gamma", "xi": "xi", "l": "l", "mixup_alpha": "mixupAlpha",
                    "mixup_margin": "mixupMargin", "p_fg": "pFg", "p_bg": "pBg"}


def fieldDefaults() -> dict:
    return {name: getattr(AsymSegParameters, name) for name in typing.get_type_hints(AsymSegParameters)}


def settingsFromParameters(parameters, device: str = "auto", initialModel: str = "") -> TrainingSettings:
    return TrainingSettings(
        preset=parameters.preset,
        technique={key: float(getattr(parameters, field)) for key, field in TECHNIQUE_FIELDS.items()},
        iterations=int(parameters.iterations),
        patchSize=(int(parameters.patchZ), int(parameters.patchY), int(parameters.patchX)),
        batchSize=int(parameters.batchSize),
        learningRate=float(parameters.learningRate),
        validationInterval=int(parameters.validationInterval),
        device=device or "auto",
        initialModel=initialModel or "",
    )


_WRAPPED = None


def parameterNodeClass():
    """The ``@parameterNodeWrapper`` class (Slicer only; imported on first use, not at import)."""
    global _WRAPPED
    if _WRAPPED is None:
        from slicer.parameterNodeWrapper import parameterNodeWrapper

        namespace = {"__annotations__": dict(typing.get_type_hints(AsymSegParameters)), **fieldDefaults(),
                     "__module__": __name__, "__doc__": AsymSegParameters.__doc__}
        _WRAPPED = parameterNodeWrapper(type("AsymSegParameterNode", (), namespace))
    return _WRAPPED
