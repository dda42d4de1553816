"""What an imported prediction remembers, and the training case it becomes once corrected.

Qt-free. The inference import (``Logic.importInferenceResults``) stores on the new segmentation
the volumes it was computed from, one node reference per model channel (``AsymSegInputChannel<c>``,
their count in ``AsymSeg.InputCount``, so a removed volume leaves a gap, not a shorter list), and
the model file (``AsymSeg.Model``). Node references survive scene save and load, as the case
table's do (``CaseStore``). After the user corrects the segments in Segment Editor,
``trainingCase`` makes the prediction a case of the training table: those volumes as channels, the
segmentation itself as the annotation (its segment names are the model's class names, so the
class catalogue matches them), role train. Nothing is copied and no other node is touched.
"""

from __future__ import annotations

import os
from typing import Optional

from .Cases import CaseInput
from .ResultImport import PREDICTION_ATTRIBUTE

MODEL_ATTRIBUTE = "AsymSeg.Model"
COUNT_ATTRIBUTE = "AsymSeg.InputCount"


def _inputRole(channel: int) -> str:
    return f"AsymSegInputChannel{channel}"


def rememberInputs(prediction, volumes: list, modelPath) -> None:
    """Record on ``prediction`` (a segmentation the import made) its input ``volumes`` and the model file."""
    for channel, volume in enumerate(volumes):
        prediction.SetNodeReferenceID(_inputRole(channel), volume.GetID())
    prediction.SetAttribute(COUNT_ATTRIBUTE, str(len(volumes)))
    prediction.SetAttribute(MODEL_ATTRIBUTE, os.fspath(modelPath))


def isPrediction(node) -> bool:
    return node is not None and node.GetAttribute(PREDICTION_ATTRIBUTE) is not None


def inputVolumes(prediction) -> list:
    """The input volumes in channel order; None for one no longer in the scene."""
    count = int(prediction.GetAttribute(COUNT_ATTRIBUTE) or 0)
    return [prediction.GetNodeReference(_inputRole(channel)) for channel in range(count)]


def predictionModel(prediction) -> str:
    """The model file that made ``prediction`` ("" when it does not say)."""
    return (prediction.GetAttribute(MODEL_ATTRIBUTE) or "") if prediction is not None else ""


def trainingCase(prediction) -> CaseInput:
    """The training case of a (corrected) prediction; ValueError naming what is missing."""
    name = prediction.GetName()
    if not isPrediction(prediction):
        raise ValueError(f"'{name}' is not a prediction of AsymSeg: add it in Training data by hand.")
    volumes = inputVolumes(prediction)
    if not volumes:
        raise ValueError(f"'{name}' does not record the volumes it was computed from (imported by an older "
                         "AsymSeg): add it in Training data by hand, with its volumes.")
    missing = [channel + 1 for channel, volume in enumerate(volumes) if volume is None]
    if missing:
        raise ValueError(f"The input volume of channel(s) {missing} of '{name}' is no longer in the scene: "
                         "add the case in Training data by hand.")
    return CaseInput(volumes, prediction, "train")


def caseRow(cases: list[CaseInput], prediction) -> Optional[int]:
    """The row of the case whose annotation is ``prediction`` (None: not a case yet)."""
    return next((index for index, case in enumerate(cases)
                 if case.annotation is not None and case.annotation.GetID() == prediction.GetID()), None)
