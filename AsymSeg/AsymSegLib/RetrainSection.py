"""Part of section 5, Results (Qt): correct a prediction and retrain.

The prediction selector lists the segmentations the inference import made (``AsymSeg.Prediction``);
each new prediction is chosen. Once the user has corrected it in Segment Editor, "Use as training
case" adds it to the Training data table once: its input volumes as channels, the segmentation as
the annotation, role train (``Predictions``). "Fine-tune from this model" is run by the panel (it
spans sections) from ``fineTuneModel``: the model that made the chosen prediction, else the last
one trained.
"""

from __future__ import annotations

from typing import Callable

import slicer

from .CasesSection import CasesSection
from .FineTune import SHARE_IN_WORDS
from .Logic import TrainingLogicProtocol
from .Predictions import caseRow, predictionModel
from .QtUtils import OK_COLOR, WARNING_COLOR, richText
from .ResultImport import PREDICTION_ATTRIBUTE
from .Signal import Signal


class RetrainSection:
    def __init__(self, ui, logic: TrainingLogicProtocol, cases: CasesSection, lastModel: Callable[[], str]):
        self.ui = ui
        self.logic = logic
        self.cases = cases
        self.lastModel = lastModel           # the last model trained (this session, else this scene)
        self.changed = Signal()              # the chosen prediction changed
        ui.predictionSelector.addAttribute("vtkMRMLSegmentationNode", PREDICTION_ATTRIBUTE)
        ui.predictionSelector.setMRMLScene(slicer.mrmlScene)
        ui.predictionSelector.connect("currentNodeChanged(vtkMRMLNode*)", lambda *_: self.changed.emit())
        ui.useAsTrainingCaseButton.clicked.connect(self.onUseAsTrainingCase)

    def prediction(self):
        return self.ui.predictionSelector.currentNode()

    def showPrediction(self, segmentation) -> None:
        """Choose a newly imported prediction."""
        self.ui.predictionSelector.setCurrentNode(segmentation)

    def fineTuneModel(self) -> str:
        """The model that made the chosen prediction, else the last one trained ("" : none)."""
        return predictionModel(self.prediction()) or self.lastModel() or ""

    def updateButtons(self, ready: bool, running: bool) -> None:
        """``ready``: the training data can be trained on; ``running``: an engine task runs."""
        self.ui.useAsTrainingCaseButton.enabled = self.prediction() is not None
        model = self.fineTuneModel()
        self.ui.fineTuneButton.enabled = ready and not running and bool(model)
        self.ui.fineTuneButton.toolTip = f"Train from {model} on the training cases with {SHARE_IN_WORDS} of the " \
                                         "time budget" if model else "Apply or train a model first"

    def showStatus(self, text: str, color: str = "") -> None:
        self.ui.retrainStatusLabel.text = richText(text, color)

    def onUseAsTrainingCase(self) -> None:
        """Add the chosen prediction, as corrected, to the training cases (once)."""
        prediction = self.prediction()
        row = caseRow(self.cases.cases(), prediction)
        if row is not None:
            self.showStatus(f"'{prediction.GetName()}' is already training case {row + 1} in Training data: "
                            "not added again.", WARNING_COLOR)
            return
        with slicer.util.tryWithErrorDisplay("AsymSeg could not add the prediction as a training case."):
            case, channelNames = self.logic.trainingCaseFromPrediction(prediction)
            row = self.cases.addCase(case, channelNames)
            volumes = ", ".join(f"'{v.GetName()}'" for v in case.images)
            self.showStatus(f"Training case {row + 1} added: {volumes} with '{prediction.GetName()}' as its "
                            "annotation (role train). Edits to the segmentation until Start are trained on.",
                            OK_COLOR)
