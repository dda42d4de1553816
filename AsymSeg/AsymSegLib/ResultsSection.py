"""Section 5, Results (Qt): apply a model to a volume set; logit histograms of training vs unseen cases.

One volume selector per channel of the chosen model (else of the Training data section).
A finished training hands its model and histograms here; ``changed`` is emitted when what
the Apply button depends on changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import qt
import slicer

from .Logic import TrainingLogicProtocol, inferenceRunFolder, modelInfo
from .LogitPlots import LogitChartSet, preferredChart, showChart
from .QtUtils import ERROR_COLOR, MODEL_FILE_FILTERS, Dialogs, richText, setSettingValue, settingValue, volumeSelector
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
        self.changed = Signal()
        ui.modelPathLineEdit.nameFilters = MODEL_FILE_FILTERS
        ui.modelPathLineEdit.currentPath = settingValue("ModelPath", "")
        ui.applyInputsWidget.setLayout(qt.QFormLayout())
        ui.groundTruthSelector.setMRMLScene(slicer.mrmlScene)
        ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathChanged)
        ui.showHistogramsButton.clicked.connect(self.onShowHistograms)
        self.updateApplyInputs()

    def setParameters(self, parameters) -> None:
        self.parameters = parameters

    def updateButtons(self, running: bool) -> None:
        self.ui.applyButton.enabled = not running and bool(self.ui.modelPathLineEdit.currentPath) and \
            all(s.currentNode() is not None for s in self.applySelectors)
        self.ui.showHistogramsButton.enabled = self.charts is not None

    def onModelPathChanged(self, path: str) -> None:
        setSettingValue("ModelPath", path)
        self.updateApplyInputs()

    def useTrainedModel(self, sessionModel: Optional[str]) -> None:
        """Choose the model trained in this session, else the last one trained in this scene."""
        model = sessionModel or (self.parameters.lastModel if self.parameters is not None else "")
        if model:
            self.ui.modelPathLineEdit.currentPath = model
        else:
            self.ui.resultsStatusLabel.text = "No training has finished in this session or scene yet."

    def updateApplyInputs(self) -> None:
        """One volume selector per channel of the chosen model (else of the Training data section)."""
        path = self.ui.modelPathLineEdit.currentPath
        channels = []
        if path and Path(path).is_file():
            try:
                channels = modelInfo(path).channels
            except (OSError, ValueError):
                channels = []
        channels = channels or self.channelNames()
        layout = self.ui.applyInputsWidget.layout()
        previous = [s.currentNode() for s in self.applySelectors]
        while layout.count():
            item = layout.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        self.applySelectors = []
        for index, name in enumerate(channels):
            selector = volumeSelector(f"Volume for the model's channel '{name}'")
            if index < len(previous) and previous[index] is not None:
                selector.setCurrentNode(previous[index])
            selector.connect("currentNodeChanged(vtkMRMLNode*)", lambda *_: self.changed.emit())
            layout.addRow(f"{name}:", selector)
            self.applySelectors.append(selector)
        self.changed.emit()

    def startInference(self, outputFolder: str, device: str) -> EngineTask:
        """Export the chosen volumes into a new folder under ``outputFolder`` and start the engine."""
        volumes = [s.currentNode() for s in self.applySelectors]
        folder = inferenceRunFolder(outputFolder, volumes[0].GetName() if volumes[0] else "")
        prepared = self.logic.prepareInference(self.ui.modelPathLineEdit.currentPath, volumes, folder,
                                               self.ui.groundTruthSelector.currentNode(), device)
        task = self.logic.startInference(prepared)
        task.context["reference"] = volumes[0]
        return task

    def showState(self, state: RunState) -> None:
        self.ui.resultsStatusLabel.text = richText(state.statusLine())

    def trainingFinished(self, task: EngineTask) -> list[str]:
        """Choose the trained model and show its histograms; returns the import's messages for the log."""
        state = task.state
        if state.model and state.status is not RunStatus.FAILED:
            self.ui.modelPathLineEdit.currentPath = state.model
            if self.parameters is not None:
                self.parameters.lastModel = state.model
        if state.status is not RunStatus.FINISHED:
            return []
        results = self.logic.importTrainingResults(task)
        if results.charts is not None and results.charts.charts:
            self.showCharts(results.charts, task.context.get("rarity"))
        return results.messages

    def inferenceFinished(self, task: EngineTask) -> None:
        """Import the prediction (a new segmentation), its metrics and its histograms."""
        state = task.state
        if state.status is not RunStatus.FINISHED:
            self.ui.resultsStatusLabel.text = richText(state.statusLine(), ERROR_COLOR)
            self.dialogs.showFailure(state, "AsymSeg inference failed")
            return
        reference = task.context.get("reference")
        results = self.logic.importInferenceResults(task, reference)
        slicer.util.setSliceViewerLayers(background=reference, fit=True)
        text = f"New segmentation '{results.segmentation.GetName()}'."
        if results.metricsTable is not None:
            text += f" Metrics in table '{results.metricsTable.GetName()}'."
        if results.charts is not None and results.charts.charts:
            self.showCharts(results.charts, _foregroundRare(results.charts))
            text += " Logit histograms: this case vs the training cases."
        for message in results.messages:
            text += " " + message
        self.ui.resultsStatusLabel.text = richText(text)

    def showCharts(self, charts: LogitChartSet, rarity: Optional[dict]) -> None:
        """Keep ``charts`` for the Show histograms button and show the first rare class's chart."""
        self.charts = charts
        chart = preferredChart(charts, rarity)
        if chart is not None:
            showChart(chart)

    def onShowHistograms(self) -> None:
        if self.charts is not None:
            self.showCharts(self.charts, _foregroundRare(self.charts))

    def clearCharts(self) -> None:
        self.charts = None


def _foregroundRare(charts: LogitChartSet) -> dict:
    """Every class but the first (background) counted as rare: the rarity when the run's is not at hand."""
    return {name: 1 for name in list(charts.charts)[1:]}
