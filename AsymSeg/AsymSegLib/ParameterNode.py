"""The module's parameter node: what a saved scene restores in the panels.

``AsymSegParameters`` lists the fields (type hints and defaults), built from the engine's
``protocol.json``: one float field per numeric technique setting (camelCase of its name,
default of the recommended preset or the setting's own) and the training fields the panel
edits (job defaults). Inside Slicer (>= 5.4) ``parameterNodeClass()`` wraps it with
``slicer.parameterNodeWrapper`` so the widgets whose ``SlicerParameterName`` dynamic
property names a field are bound with ``connectGui``. ``settingsFromParameters`` turns any
object with these fields into ``TrainingSettings`` (tested with a plain instance;
slicer-core has no parameter node wrapper). The case table is stored in the same node by
``CaseStore``. Machine-specific choices (device, folders, model paths) are not here but in
``qt.QSettings`` (the widget).

No ``from __future__ import annotations`` here: the wrapper reads real type objects.
"""

import typing

from .JobSpec import TrainingSettings
from .Presets import PRESETS, RECOMMENDED, SETTINGS
from .Protocol import jobDefault


def camelCase(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part[:1].upper() + part[1:] for part in rest)


# protocol technique setting -> parameter field
TECHNIQUE_FIELDS = {key: camelCase(key) for key in SETTINGS}

_PATCH = jobDefault("patch_size")
_FIELDS = {
    "preset": (str, RECOMMENDED),
    **{field: (float, PRESETS[RECOMMENDED].defaults.get(key, SETTINGS[key].default))
       for key, field in TECHNIQUE_FIELDS.items()},
    "iterations": (int, jobDefault("iterations")),
    "patchZ": (int, _PATCH[0]),
    "patchY": (int, _PATCH[1]),
    "patchX": (int, _PATCH[2]),
    "batchSize": (int, jobDefault("batch_size")),
    "learningRate": (float, jobDefault("learning_rate")),
    "validationInterval": (int, jobDefault("validation_interval")),
    "rarityJson": (str, "{}"),   # class name -> rarity, as JSON (restored onto the Classes panel)
    "lastModel": (str, ""),      # model of the last finished training in this scene
}

AsymSegParameters = type("AsymSegParameters", (), {
    "__annotations__": {name: kind for name, (kind, _) in _FIELDS.items()},
    **{name: default for name, (_, default) in _FIELDS.items()},
    "__module__": __name__,
    "__doc__": "Fields and defaults of the parameter node (the Technique panel and the class rarity).",
})


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
