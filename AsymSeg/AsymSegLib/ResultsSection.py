"""Section 5, Results (Qt): apply a model to a volume set; margin charts of training vs unseen cases;
where the model hesitates; logit offsets (``OffsetsSection``).

One volume selector per channel of the chosen model (else of the Training data section).
A finished training hands its model and margin charts here; the charts' sentences (share of
each rare class's voxels on the wrong side of the boundary) go under the buttons. A prediction
comes with, per rare class, its probability as the slice views' foreground (heat colours) unless
"Show where the model hesitates" is unchecked, and with the logit-offset sliders. Every node of a
run is in its folder "AsymSeg <run folder>" of the Data module; while the prediction is shown the
other segmentations are hidden (the logic's ``PredictionVisibility``). ``changed``
is emitted when what the Apply button depends on changed, ``predictionImported`` with each new
prediction (correct and retrain: ``RetrainSection``). The chosen model is also the one that ranks
the cases to annotate next (``RankSection``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import qt
import slicer

from .Logic import TrainingLogicProtocol, inferenceRunFolder, modelInfo
from .LogitPlots import LogitChartSet, preferredChart, showChart
from .OffsetsSection import OffsetsSection
from .Probabilities import OVERLAY_OPACITY, OVERLAY_THRESHOLD
from .QtUtils import (ERROR_COLOR, MODEL_FILE_FILTERS, Dialogs, clearLayout, richText, setSettingValue, settingValue,
                      volumeSelector)
from .Runs import EngineTask, RunState, RunStatus
from .Signal import Signal


class ResultsSection:
    def __init__(self, ui, logic: TrainingLogicProtocol, dialogs: Dialogs, channelNames: Callable[[], list[str]]):
        self.ui = ui
        self.logic = logic
        self.dialogs = dialogs
        self.channelNames = channelNames     # the Training data section's channels
        self.parameters = None               # parameterNodeWrapper instance
        self.applySelectors: list = []
        self.charts: Optional[LogitChartSet] = None
        self.chartRarity: dict = {}          # class name -> rarity of the charts' model
        self.overlays: dict = {}             # rare class name -> probability volume of the last prediction
        self.offsets = OffsetsSection(ui)
        self.changed = Signal()
        self.predictionImported = Signal("vtkMRMLSegmentationNode")
        ui.modelPathLineEdit.nameFilters = MODEL_FILE_FILTERS
        ui.modelPathLineEdit.currentPath = settingValue("ModelPath", "")
        ui.applyInputsWidget.setLayout(qt.QFormLayout())
        ui.groundTruthSelector.setMRMLScene(slicer.mrmlScene)
        ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathChanged)
        ui.showMarginsButton.clicked.connect(lambda: self.showCharts(self.charts, self.chartRarity))
        ui.showProbabilitiesCheckBox.toggled.connect(self.onShowProbabilities)
        self.updateApplyInputs()

    def setParameters(self, parameters) -> None:
        self.parameters = parameters

    def updateButtons(self, running: bool) -> None:
        self.ui.applyButton.enabled = not running and bool(self.modelPath()) and \
            all(s.currentNode() is not None for s in self.applySelectors)
        self.ui.showMarginsButton.enabled = self.charts is not None

    def onModelPathChanged(self, path: str) -> None:
        setSettingValue("ModelPath", path)
        self.updateApplyInputs()

    def useTrainedModel(self, model: str) -> None:
        """Choose ``model``, the last one trained (this session, else this scene), or say there is none."""
        if model:
            self.ui.modelPathLineEdit.currentPath = model
        else:
            self.ui.resultsStatusLabel.text = "No training has finished in this session or scene yet."

    def modelPath(self) -> str:
        return self.ui.modelPathLineEdit.currentPath

    def modelChannels(self) -> list[str]:
        """The channel names of the chosen model, else the Training data section's."""
        path = self.modelPath()
        channels = []
        if path and Path(path).is_file():
            try:
                channels = modelInfo(path).channels
            except (OSError, ValueError):
                channels = []
        return channels or self.channelNames()

    def updateApplyInputs(self) -> None:
        """One volume selector per channel of the chosen model (else of the Training data section)."""
        channels = self.modelChannels()
        layout = self.ui.applyInputsWidget.layout()
        previous = [s.currentNode() for s in self.applySelectors]
        clearLayout(layout)
        self.applySelectors = []
        for index, name in enumerate(channels):
            selector = volumeSelector(f"Volume for the model's channel '{name}'")
            if index < len(previous) and previous[index] is not None:
                selector.setCurrentNode(previous[index])
            selector.connect("currentNodeChanged(vtkMRMLNode*)", lambda *_: self.changed.emit())
            layout.addRow(f"{name}:", selector)
            self.applySelectors.append(selector)
        self.changed.emit()

    def setApplyVolumes(self, volumes: list) -> None:
        """Choose ``volumes`` (channel order) as the volumes to apply the model to."""
        for selector, volume in zip(self.applySelectors, volumes):
            selector.setCurrentNode(volume)

    def startInference(self, outputFolder: str, device: str) -> EngineTask:
        """Export the chosen volumes into a new folder under ``outputFolder`` and start the engine."""
        volumes = [s.currentNode() for s in self.applySelectors]
        folder = inferenceRunFolder(outputFolder, volumes[0].GetName() if volumes[0] else "")
        prepared = self.logic.prepareInference(self.modelPath(), volumes, folder,
                                               self.ui.groundTruthSelector.currentNode(), device)
        task = self.logic.startInference(prepared)
        task.context["reference"] = volumes[0]
        return task

    def showState(self, state: RunState) -> None:
        self.ui.resultsStatusLabel.text = richText(state.statusLine())

    def trainingFinished(self, task: EngineTask) -> list[str]:
        """Choose the trained model and show its margin charts; returns the import's messages for the log."""
        state = task.state
        if state.model and state.status is not RunStatus.FAILED:
            self.ui.modelPathLineEdit.currentPath = state.model
            if self.parameters is not None:
                self.parameters.lastModel = state.model
        if state.status is not RunStatus.FINISHED:
            return []
        results = self.logic.importTrainingResults(task)
        if results.charts is not None and results.charts.charts:
            self.showCharts(results.charts, task.context.get("rarity") or {})
        return results.messages

    def inferenceFinished(self, task: EngineTask) -> None:
        """Import the prediction (a new segmentation), its metrics, margin charts, probabilities and offsets."""
        state = task.state
        if state.status is not RunStatus.FINISHED:
            self.ui.resultsStatusLabel.text = richText(state.statusLine(), ERROR_COLOR)
            self.dialogs.showFailure(state, "AsymSeg inference failed")
            return
        reference = task.context.get("reference")
        self.offsets.discard()  # before the new results: an error there leaves the last prediction as applied
        results = self.logic.importInferenceResults(task, reference,
                                                    overlays=self.ui.showProbabilitiesCheckBox.checked)
        self.overlays = results.overlays
        slicer.util.setSliceViewerLayers(background=reference, fit=True)
        self.onShowProbabilities(self.ui.showProbabilitiesCheckBox.checked)
        self.offsets.setResults(results)
        text = f"New segmentation '{results.segmentation.GetName()}'{_inFolder(results.folder)}; the other " \
            "segmentations are hidden while it is shown (hide or delete it to show them again)."
        if self.overlays:
            text += " Where the model hesitates: " + ", ".join(f"'{n.GetName()}'" for n in self.overlays.values()) + \
                f" (heat colours over the slices; transparent below {OVERLAY_THRESHOLD:.0%})."
        if results.metricsTable is not None:
            text += f" Metrics in table '{results.metricsTable.GetName()}'."
        if results.charts is not None and results.charts.charts:
            self.showCharts(results.charts, {name: 1.0 for name in results.rareClasses})
            text += " Margin charts: this case vs the training cases."
        for message in results.messages:
            text += " " + message
        self.ui.resultsStatusLabel.text = richText(text)
        self.predictionImported.emit(results.segmentation)

    def showCharts(self, charts: LogitChartSet, rarity: dict) -> None:
        """Keep ``charts`` for the Show margin charts button, show the first rare class's chart and the rare
        classes' sentences."""
        self.charts, self.chartRarity = charts, rarity
        self.ui.marginSummaryLabel.text = "<br>".join(richText(sentence) for name, sentence in charts.sentences.items()
                                                      if rarity.get(name, 0) > 0)
        chart = preferredChart(charts, rarity)
        if chart is not None:
            showChart(chart)

    def onShowProbabilities(self, show: bool) -> None:
        """The first rare class's probability as the slice views' foreground, or no foreground."""
        if self.overlays:
            overlay = next(iter(self.overlays.values()))
            slicer.util.setSliceViewerLayers(foreground=overlay if show else None, foregroundOpacity=OVERLAY_OPACITY)

    def clear(self) -> None:
        """The scene is gone, and the charts, overlays and prediction with it."""
        self.charts, self.chartRarity = None, {}
        self.ui.marginSummaryLabel.text = ""
        self.overlays = {}
        self.offsets.clear()


def _inFolder(folderItem: int) -> str:
    """`` in folder 'AsymSeg <run>' (Data module)`` for a subject-hierarchy folder item, "" for none."""
    if not folderItem:
        return ""
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    return f" in folder '{shNode.GetItemName(folderItem)}' (Data module)" if shNode is not None else ""
