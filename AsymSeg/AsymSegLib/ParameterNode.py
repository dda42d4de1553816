"""The module's parameter node: what a saved scene restores in the panels.

``AsymSegParameters`` lists the fields (type hints and defaults), built from the engine's
``protocol.json``: one float field per numeric technique setting (camelCase of its name,
default of the recommended preset or the setting's own) and the training fields the panel
edits (job defaults). A setting the engine plans is ``AUTO`` (0, the spin boxes' minimum,
shown as "auto") until the user sets it; the target spacing is "auto", "native" or "custom"
(then ``spacingZ/Y/X``). Inside Slicer (>= 5.4) ``parameterNodeClass()`` wraps it with
``slicer.parameterNodeWrapper`` so the widgets whose ``SlicerParameterName`` dynamic
property names a field are bound with ``connectGui``. ``settingsFromParameters`` turns any
object with these fields into ``TrainingSettings`` (tested with a plain instance;
slicer-core has no parameter node wrapper). The case table is stored in the same node by
``CaseStore``. Machine-specific choices (device, folders, model paths) are not here but in
``qt.QSettings`` (the widget).

No ``from __future__ import annotations`` here: the wrapper reads real type objects.
"""

import typing

from .JobSpec import NATIVE_SPACING, TrainingSettings
from .Presets import PRESETS, RECOMMENDED, SETTINGS
from .Protocol import jobDefault

AUTO = 0  # a planned setting's parameter value when the engine chooses it
SPACING_AUTO, SPACING_CUSTOM = "auto", "custom"  # target spacing modes, with NATIVE_SPACING
SPACING_MODES = (SPACING_AUTO, NATIVE_SPACING, SPACING_CUSTOM)


def camelCase(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part[:1].upper() + part[1:] for part in rest)


# protocol technique setting -> parameter field
TECHNIQUE_FIELDS = {key: camelCase(key) for key in SETTINGS}

_FIELDS = {
    "preset": (str, RECOMMENDED),
    **{field: (float, PRESETS[RECOMMENDED].defaults.get(key, SETTINGS[key].default))
       for key, field in TECHNIQUE_FIELDS.items()},
    "iterations": (int, AUTO),
    "patchZ": (int, AUTO),
    "patchY": (int, AUTO),
    "patchX": (int, AUTO),
    "batchSize": (int, AUTO),
    "learningRate": (float, float(AUTO)),
    "validationInterval": (int, AUTO),
    "targetSpacing": (str, SPACING_AUTO),   # one of SPACING_MODES
    "spacingZ": (float, 1.0),               # mm, used when targetSpacing is custom
    "spacingY": (float, 1.0),
    "spacingX": (float, 1.0),
    "timeBudgetMinutes": (float, float(jobDefault("time_budget_minutes"))),
    "earlyStopping": (bool, bool(jobDefault("early_stopping"))),
    "rarityJson": (str, "{}"),   # class name -> rarity, as JSON (restored onto the Classes panel)
    "trainAsJson": (str, "{}"),  # source label -> training class it is merged into, as JSON (Classes panel)
    "lastModel": (str, ""),      # model of the last finished training in this scene
}

AsymSegParameters = type("AsymSegParameters", (), {
    "__annotations__": {name: kind for name, (kind, _) in _FIELDS.items()},
    **{name: default for name, (_, default) in _FIELDS.items()},
    "__module__": __name__,
    "__doc__": "Fields and defaults of the parameter node (the Technique panel, class mapping and rarity).",
})


def fieldDefaults() -> dict:
    return {name: getattr(AsymSegParameters, name) for name in typing.get_type_hints(AsymSegParameters)}


def _setOrAuto(value, kind):
    """``kind(value)``, or None (auto) for ``AUTO`` and below."""
    return kind(value) if value > AUTO else None


def settingsFromParameters(parameters, device: str = "auto", initialModel: str = "") -> TrainingSettings:
    """The training settings of the parameter fields; an ``AUTO`` field (for the patch: all three) is planned."""
    patch = (int(parameters.patchZ), int(parameters.patchY), int(parameters.patchX))
    mode = parameters.targetSpacing
    spacing = (None if mode == SPACING_AUTO else
               (float(parameters.spacingZ), float(parameters.spacingY), float(parameters.spacingX))
               if mode == SPACING_CUSTOM else mode)  # NATIVE_SPACING, or an unknown mode that problems() names
    return TrainingSettings(
        preset=parameters.preset,
        technique={key: float(getattr(parameters, field)) for key, field in TECHNIQUE_FIELDS.items()},
        iterations=_setOrAuto(parameters.iterations, int),
        patchSize=None if all(p <= AUTO for p in patch) else patch,
        batchSize=_setOrAuto(parameters.batchSize, int),
        learningRate=_setOrAuto(parameters.learningRate, float),
        validationInterval=_setOrAuto(parameters.validationInterval, int),
        targetSpacing=spacing,
        timeBudgetMinutes=float(parameters.timeBudgetMinutes),
        earlyStopping=bool(parameters.earlyStopping),
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
