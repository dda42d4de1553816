"""The AsymSeg panel (Qt): five collapsible sections bound to the Qt-free logic.

The only AsymSegLib file besides ``ParameterNode.parameterNodeClass`` that touches Qt, and it
is imported by ``AsymSegWidget.setup`` only. It receives its logic typed by
``TrainingLogicProtocol`` so it can be driven by a fake. The engine runs in a child process;
a ``qt.QTimer`` on the GUI thread drains its events (``EngineTask.poll``), so Slicer stays
usable while it trains.
"""

from __future__ import annotations

import html
import json
import logging
import os
from pathlib import Path
from typing import Optional

import qt
import slicer

from .Cases import ROLES, CaseInput, Issue
from .CaseStore import loadCases, saveCases
from .Dependencies import checkDependencies, installDependencies
from .Devices import deviceChoices, listGpus
from .Logic import TrainingLogicProtocol, modelInfo, timestampedFolder
from .LogitPlots import preferredChart, showChart
from .ParameterNode import TECHNIQUE_FIELDS, parameterNodeClass, settingsFromParameters
from .Presets import PRESETS, RECOMMENDED, SETTINGS
from .Runs import EngineTask, RunStatus, formatDuration

SETTINGS_PREFIX = "AsymSeg/"
POLL_INTERVAL_MS = 200
ERROR_COLOR, WARNING_COLOR, OK_COLOR = "#c62828", "#b26a00", "#2e7d32"


def richText(text: str, color: str = "") -> str:
    """Escaped text inside a span, so QLabel renders it as rich text (entities decoded)."""
    style = f" style='color:{color}'" if color else ""
    return f"<span{style}>{html.escape(text, quote=False)}</span>"


def comboData(combo):
    """The current item's data (``itemData(currentIndex)``: unambiguous in PythonQt)."""
    return combo.itemData(combo.currentIndex)


def _settings():
    return qt.QSettings()


def settingValue(key: str, default: str = "") -> str:
    value = _settings().value(SETTINGS_PREFIX + key, default)
    return default if value is None else str(value)


def setSettingValue(key: str, value: str) -> None:
    _settings().setValue(SETTINGS_PREFIX + key, value)


class CaseRow:
    """The widgets of one row of the case table."""

    def __init__(self, panel: "AsymSegPanel"):
        self.channelSelectors: list = []
        self.annotationSelector = panel.nodeSelector(["vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationNode"],
                                                     "Annotation: a labelmap volume or a segmentation")
        self.roleSelector = qt.QComboBox()
        for role in ROLES:
            self.roleSelector.addItem(role)
        self.roleSelector.toolTip = "train: used for training; validation: unseen, for metrics and histograms"
        self.statusLabel = qt.QLabel()

    def setChannelCount(self, panel: "AsymSegPanel", count: int) -> None:
        while len(self.channelSelectors) < count:
            self.channelSelectors.append(panel.nodeSelector(["vtkMRMLScalarVolumeNode"], "Input volume of this channel",
                                                            showChildNodeTypes=False))
        del self.channelSelectors[count:]

    def toCase(self) -> CaseInput:
        return CaseInput([s.currentNode() for s in self.channelSelectors], self.annotationSelector.currentNode(),
                         self.roleSelector.currentText)


class AsymSegPanel:
    """Connects the .ui widgets (``ui``) with the logic and the parameter node."""

    def __init__(self, ui, logic: TrainingLogicProtocol, interactive: bool = True):
        self.ui = ui
        self.logic = logic
        self.interactive = interactive       # False in tests: no modal dialogs
        self.parameters = None               # parameterNodeWrapper instance
        self._guiTag = None
        self.rows: list[CaseRow] = []
        self.analysis = None
        self.task: Optional[EngineTask] = None
        self.lastPrepared = None
        self.lastTrainingTask: Optional[EngineTask] = None
        self.lastCharts = None
        self.applySelectors: list = []
        self._updating = False
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.timeout.connect(self.onTimer)
        self._classesTimer = qt.QTimer()
        self._classesTimer.setSingleShot(True)
        self._classesTimer.setInterval(400)
        self._classesTimer.timeout.connect(self.refreshClasses)
        self._setupWidgets()
        self._connect()

    # ------------------------------------------------------------------ setup

    def nodeSelector(self, nodeTypes: list, toolTip: str, showChildNodeTypes: bool = True):
        selector = slicer.qMRMLNodeComboBox()
        selector.nodeTypes = nodeTypes
        selector.showChildNodeTypes = showChildNodeTypes
        selector.noneEnabled = True
        selector.addEnabled = False
        selector.removeEnabled = False
        selector.renameEnabled = False
        selector.selectNodeUponCreation = False
        selector.showHidden = False
        selector.toolTip = toolTip
        selector.setMRMLScene(slicer.mrmlScene)
        return selector

    def _setupWidgets(self) -> None:
        ui = self.ui
        ui.casesTable.verticalHeader().setVisible(False)
        ui.classesTable.verticalHeader().setVisible(False)
        ui.classesTable.setColumnCount(6)
        ui.classesTable.setHorizontalHeaderLabels(["Class", "Label", "Voxels (train)", "Background : class", "Rare",
                                                   "Rarity"])
        ui.classesTable.setColumnHidden(5, True)
        for name in PRESETS:
            ui.presetComboBox.addItem(PRESETS[name].displayLabel(), name)
        ui.outputFolderPathLineEdit.currentPath = settingValue("OutputFolder", os.path.join(os.path.expanduser("~"),
                                                                                            "AsymSeg"))
        ui.initialModelPathLineEdit.currentPath = settingValue("InitialModel", "")
        ui.initialModelPathLineEdit.nameFilters = ["Model files (*.pt)", "All files (*)"]
        ui.modelPathLineEdit.nameFilters = ["Model files (*.pt)", "All files (*)"]
        ui.modelPathLineEdit.currentPath = settingValue("ModelPath", "")
        ui.applyInputsWidget.setLayout(qt.QFormLayout())
        ui.groundTruthSelector.setMRMLScene(slicer.mrmlScene)
        self.refreshDevices()
        self.updateApplyInputs()

    def _connect(self) -> None:
        ui = self.ui
        ui.channelNamesLineEdit.editingFinished.connect(self.onChannelNamesChanged)
        ui.addCaseButton.clicked.connect(self.onAddCase)
        ui.removeCaseButton.clicked.connect(self.onRemoveCase)
        ui.checkDataButton.clicked.connect(self.onCheckData)
        ui.showRarityCheckBox.toggled.connect(lambda on: ui.classesTable.setColumnHidden(5, not on))
        ui.presetComboBox.connect("currentIndexChanged(int)", self.onPresetChanged)
        ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        ui.refreshDevicesButton.clicked.connect(self.refreshDevices)
        ui.outputFolderPathLineEdit.connect("currentPathChanged(QString)",
                                            lambda path: setSettingValue("OutputFolder", path))
        ui.initialModelPathLineEdit.connect("currentPathChanged(QString)",
                                            lambda path: setSettingValue("InitialModel", path))
        ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathChanged)
        ui.startButton.clicked.connect(lambda: self.onStart(resume=False))
        ui.resumeButton.clicked.connect(lambda: self.onStart(resume=True))
        ui.cancelButton.clicked.connect(self.onCancel)
        ui.useTrainedModelButton.clicked.connect(self.onUseTrainedModel)
        ui.applyButton.clicked.connect(self.onApply)
        ui.showHistogramsButton.clicked.connect(self.onShowHistograms)

    # ------------------------------------------------------------------ parameter node

    def setParameterNode(self, scriptedModuleNode) -> None:
        """Bind the GUI to ``scriptedModuleNode`` (None: unbind), restoring the saved panels."""
        if self.parameters is not None and self._guiTag is not None:
            self.parameters.disconnectGui(self._guiTag)
            self._guiTag = None
        self.parameters = parameterNodeClass()(scriptedModuleNode) if scriptedModuleNode is not None else None
        if self.parameters is None:
            return
        self._guiTag = self.parameters.connectGui(self.ui)
        self._updating = True
        try:
            index = self.ui.presetComboBox.findData(self.parameters.preset or RECOMMENDED)
            self.ui.presetComboBox.setCurrentIndex(max(index, 0))
            self._showPresetFields()
            cases, channels = loadCases(self.parameters.parameterNode)
            self.ui.channelNamesLineEdit.text = ", ".join(channels) if channels else "image"
            self._rebuildCaseTable(cases)
        finally:
            self._updating = False
        self.onCasesChanged()

    def _saveCases(self) -> None:
        if self.parameters is not None and not self._updating:
            saveCases(self.parameters.parameterNode, self.cases(), self.channelNames())

    # ------------------------------------------------------------------ training data

    def channelNames(self) -> list[str]:
        names = [n.strip() for n in self.ui.channelNamesLineEdit.text.split(",") if n.strip()]
        return names or ["image"]

    def cases(self) -> list[CaseInput]:
        return [row.toCase() for row in self.rows]

    def onChannelNamesChanged(self) -> None:
        cases = self.cases()
        self._rebuildCaseTable(cases)
        self.updateApplyInputs()
        self.onCasesChanged()

    def _rebuildCaseTable(self, cases: list[CaseInput]) -> None:
        channels = self.channelNames()
        table = self.ui.casesTable
        wasUpdating, self._updating = self._updating, True
        try:
            table.clearContents()
            table.setColumnCount(len(channels) + 3)
            table.setHorizontalHeaderLabels(channels + ["Annotation", "Role", "Check"])
            table.setRowCount(0)
            self.rows = []
            for case in cases:
                self._appendRow(case)
        finally:
            self._updating = wasUpdating

    def _appendRow(self, case: Optional[CaseInput] = None) -> CaseRow:
        channels = self.channelNames()
        table = self.ui.casesTable
        row = CaseRow(self)
        row.setChannelCount(self, len(channels))
        index = table.rowCount
        table.insertRow(index)
        for column, selector in enumerate(row.channelSelectors):
            if case is not None and column < len(case.images):
                selector.setCurrentNode(case.images[column])
            table.setCellWidget(index, column, selector)
            selector.connect("currentNodeChanged(vtkMRMLNode*)", self.onCasesChanged)
        if case is not None:
            row.annotationSelector.setCurrentNode(case.annotation)
            row.roleSelector.setCurrentIndex(max(row.roleSelector.findText(case.role), 0))
        table.setCellWidget(index, len(channels), row.annotationSelector)
        table.setCellWidget(index, len(channels) + 1, row.roleSelector)
        table.setCellWidget(index, len(channels) + 2, row.statusLabel)
        row.annotationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onCasesChanged)
        row.roleSelector.connect("currentIndexChanged(int)", self.onCasesChanged)
        self.rows.append(row)
        return row

    def onAddCase(self) -> None:
        role = "validation" if len(self.rows) >= 2 and all(r.roleSelector.currentText == "train" for r in self.rows) \
            else "train"
        self._appendRow(CaseInput([], None, role))
        self.onCasesChanged()

    def onRemoveCase(self) -> None:
        index = self.ui.casesTable.currentRow()
        if index < 0:
            index = len(self.rows) - 1
        if index < 0:
            return
        self.ui.casesTable.removeRow(index)
        del self.rows[index]
        self.onCasesChanged()

    def onCasesChanged(self, *_) -> None:
        if self._updating:
            return
        self._saveCases()
        self.showIssues(self.logic.checkCases(self.cases(), self.channelNames()))
        self._classesTimer.start()

    def onCheckData(self) -> None:
        self._classesTimer.stop()
        self.refreshClasses()

    def showIssues(self, issues: list[Issue]) -> None:
        byRow: dict = {}
        for issue in issues:
            if issue.case is not None:
                byRow.setdefault(issue.case, []).append(issue)
        for index, row in enumerate(self.rows):
            found = byRow.get(index, [])
            if any(i.isError for i in found):
                row.statusLabel.text = f"<span style='color:{ERROR_COLOR}'>&#10007; fix</span>"
            elif found:
                row.statusLabel.text = f"<span style='color:{WARNING_COLOR}'>&#9888; check</span>"
            else:
                row.statusLabel.text = f"<span style='color:{OK_COLOR}'>&#10003;</span>"
            row.statusLabel.toolTip = "\n".join(str(i) for i in found) or "No problem found"
        self.currentIssues = list(issues)
        if not issues:
            self.ui.dataIssuesLabel.text = f"<span style='color:{OK_COLOR}'>All cases look consistent.</span>"
        else:
            lines = [f"<span style='color:{ERROR_COLOR if i.isError else WARNING_COLOR}'>"
                     f"{'Error' if i.isError else 'Warning'}: {html.escape(str(i), quote=False)}</span>" for i in issues]
            self.ui.dataIssuesLabel.text = "<br>".join(lines)
        self.updateButtons()

    # ------------------------------------------------------------------ classes

    def refreshClasses(self) -> None:
        cases = [c for c in self.cases() if c.reference is not None and c.annotation is not None]
        if not cases:
            self.analysis = None
            self._fillClassesTable()
            return
        try:
            self.analysis = self.logic.discoverClasses(self.cases())
        except Exception as error:  # noqa: BLE001 - shown inline, never a modal error while editing
            logging.exception("AsymSeg: class discovery failed")
            self.analysis = None
            self.ui.classesHintLabel.text = richText(f"Could not read the annotations: {error}", ERROR_COLOR)
            return
        if self.parameters is not None:
            try:
                self.analysis.catalog.applyRarity(json.loads(self.parameters.rarityJson or "{}"))
            except ValueError:
                pass
        self.showIssues(self.logic.checkCases(self.cases(), self.channelNames()) + self.analysis.issues)
        self._fillClassesTable()

    def _fillClassesTable(self) -> None:
        table = self.ui.classesTable
        table.clearContents()
        catalog = self.analysis.catalog if self.analysis else None
        classes = catalog.classes if catalog else []
        table.setRowCount(len(classes))
        for index, info in enumerate(classes):
            ratio = catalog.ratio(info.name)
            cells = [info.name, str(info.value), f"{info.trainVoxels:,}",
                     "-" if info.isBackground else ("no voxels" if ratio is None else f"{ratio:,.1f} : 1")]
            for column, text in enumerate(cells):
                item = qt.QTableWidgetItem(text)
                item.setFlags(qt.Qt.ItemIsSelectable | qt.Qt.ItemIsEnabled)
                table.setItem(index, column, item)
            rare = qt.QCheckBox()
            rare.checked = info.rare
            rare.enabled = not info.isBackground
            rare.toolTip = "Rare: treated asymmetrically (kept away from the decision boundary)"
            rare.toggled.connect(lambda on, name=info.name: self.onRareToggled(name, on))
            table.setCellWidget(index, 4, rare)
            rarity = qt.QDoubleSpinBox()
            rarity.setRange(0.0, 1.0)
            rarity.setSingleStep(0.1)
            rarity.value = info.rarity
            rarity.enabled = not info.isBackground
            rarity.connect("valueChanged(double)", lambda value, name=info.name: self.onRarityChanged(name, value))
            table.setCellWidget(index, 5, rarity)
        if catalog:
            self.ui.classesHintLabel.text = ("Rare classes get the asymmetric treatment. Suggested: every class but "
                                             "background is rare, unless it outnumbers the background.")
        self.updateButtons()

    def onRareToggled(self, name: str, on: bool) -> None:
        if self.analysis:
            self.analysis.catalog.setRare(name, on)
            self._saveRarity()
            self._fillClassesTable()

    def onRarityChanged(self, name: str, value: float) -> None:
        if self.analysis:
            self.analysis.catalog.setRarity(name, value)
            self._saveRarity()

    def _saveRarity(self) -> None:
        if self.parameters is not None and self.analysis:
            self.parameters.rarityJson = json.dumps(self.analysis.catalog.rarityMap())

    # ------------------------------------------------------------------ technique

    def onPresetChanged(self, index: int) -> None:
        name = self.ui.presetComboBox.itemData(index)
        if not name:
            return
        if self.parameters is not None and not self._updating and self.parameters.preset != name:
            self.parameters.preset = name
            for key, default in PRESETS[name].defaults.items():  # a preset brings its own defaults
                setattr(self.parameters, TECHNIQUE_FIELDS[key], default)
        self._showPresetFields()

    def _showPresetFields(self) -> None:
        name = comboData(self.ui.presetComboBox) or RECOMMENDED
        preset = PRESETS[name]
        self.ui.presetDescriptionLabel.text = preset.description
        for key in SETTINGS:
            field = TECHNIQUE_FIELDS[key]
            visible = key in preset.defaults
            getattr(self.ui, f"{field}Label").setVisible(visible)
            getattr(self.ui, f"{field}SpinBox").setVisible(visible)
        self.ui.advancedTechniqueGroupBox.setEnabled(bool(preset.defaults))

    def refreshDevices(self) -> None:
        saved = settingValue("Device", "auto")
        combo = self.ui.deviceComboBox
        combo.blockSignals(True)
        combo.clear()
        for label, value in deviceChoices(listGpus()):
            combo.addItem(label, value)
        index = combo.findData(saved)
        if index < 0:
            combo.addItem(f"{saved} (not found now)", saved)
            index = combo.count - 1
        combo.setCurrentIndex(index)
        combo.blockSignals(False)

    def onDeviceChanged(self, index: int) -> None:
        value = self.ui.deviceComboBox.itemData(index)
        if value:
            setSettingValue("Device", value)

    def device(self) -> str:
        return comboData(self.ui.deviceComboBox) or "auto"

    # ------------------------------------------------------------------ run

    def updateButtons(self) -> None:
        running = self.task is not None and self.task.running
        issues = getattr(self, "currentIssues", [])
        ready = bool(self.rows) and not any(i.isError for i in issues) and self.analysis is not None
        self.ui.startButton.enabled = ready and not running
        self.ui.resumeButton.enabled = (not running and self.lastTrainingTask is not None
                                        and self.lastTrainingTask.state.status is RunStatus.CANCELLED)
        self.ui.cancelButton.enabled = running
        self.ui.applyButton.enabled = not running and bool(self.ui.modelPathLineEdit.currentPath) and \
            all(s.currentNode() is not None for s in self.applySelectors)
        self.ui.showHistogramsButton.enabled = self.lastCharts is not None

    def _ensureEngineReady(self) -> bool:
        status = checkDependencies()
        if status.ok:
            return True
        if not self.interactive:
            raise RuntimeError(f"Missing Python packages for the engine: {status.describe()}.")
        if installDependencies(status, ask=True):
            return True
        self.ui.statusLabel.text = f"The engine needs: {status.describe()}. Install them to train."
        return False

    def onStart(self, resume: bool = False) -> None:
        if self.task is not None and self.task.running:
            return
        with slicer.util.tryWithErrorDisplay("AsymSeg could not start the training.", waitCursor=True):
            if not self._ensureEngineReady():
                return
            if resume and self.lastPrepared is not None:
                prepared = self.lastPrepared
            else:
                if self.analysis is None:
                    self.refreshClasses()
                errors = [i for i in getattr(self, "currentIssues", []) if i.isError]
                if errors:
                    raise ValueError("Fix the training data first:\n" + "\n".join(str(i) for i in errors))
                settings = settingsFromParameters(self.parameters, self.device(),
                                                  self.ui.initialModelPathLineEdit.currentPath)
                root = self.ui.outputFolderPathLineEdit.currentPath or os.path.join(os.path.expanduser("~"), "AsymSeg")
                folder = timestampedFolder(root, settings.preset)
                self.ui.statusLabel.text = "Exporting the cases..."
                slicer.app.processEvents()
                prepared = self.logic.prepareTraining(self.cases(), self.channelNames(), settings, folder,
                                                      analysis=self.analysis,
                                                      rarity=self.analysis.catalog.rarityMap() if self.analysis else None)
                for issue in prepared.export.issues if prepared.export else []:
                    self.appendLog(f"WARNING: {issue}")
            self.lastPrepared = prepared
            self.ui.logTextEdit.clear()
            self.appendLog(f"Run folder: {prepared.folder}")
            task = self.logic.startTraining(prepared, resume=resume)
            self.lastTrainingTask = task
            self._watch(task)

    def _watch(self, task: EngineTask) -> None:
        self.task = task
        task.logLine.connect(self.appendLog)
        task.stateChanged.connect(self.showState)
        task.finished.connect(self.onTaskFinished)
        self.showState(task.state)
        self._timer.start()
        self.updateButtons()

    def onTimer(self) -> None:
        task = self.task
        if task is None:
            self._timer.stop()
            return
        try:
            task.poll()  # may finish the task: onTaskFinished then clears self.task
        except Exception:  # noqa: BLE001 - a display bug must not leave the timer firing forever
            logging.exception("AsymSeg: polling the engine failed")
        if not task.running and self.task is task:
            self._timer.stop()
            self.task = None
            self.updateButtons()

    def appendLog(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)

    def showState(self, state) -> None:
        if state.kind == "train":
            self.ui.progressBar.setValue(int(round(100 * state.fraction)))
            eta = f" - {formatDuration(state.etaSeconds)} left" if state.etaSeconds is not None and \
                not state.status.isFinal else ""
            self.ui.progressBar.setFormat(f"%p%{eta}")
            color = ERROR_COLOR if state.status is RunStatus.FAILED else (OK_COLOR if state.status is RunStatus.FINISHED
                                                                           else "")
            self.ui.statusLabel.text = richText(state.statusLine(), color)
            self.ui.metricsLabel.text = richText(state.metricsLine())
        else:
            self.ui.resultsStatusLabel.text = richText(state.statusLine())
        self.updateButtons()

    def onCancel(self) -> None:
        if self.task is not None and self.task.running:
            self.task.cancel(getattr(self.logic, "cancelTimeout", 60.0))

    def onTaskFinished(self, task: EngineTask) -> None:
        self._timer.stop()
        self.task = None
        with slicer.util.tryWithErrorDisplay("AsymSeg could not import the results.", waitCursor=True):
            if task.state.kind == "train":
                self._trainingFinished(task)
            else:
                self._inferenceFinished(task)
        self.updateButtons()

    def _trainingFinished(self, task: EngineTask) -> None:
        state = task.state
        if state.status is RunStatus.FAILED and self.interactive:
            slicer.util.errorDisplay(state.message, detailedText=state.hint, windowTitle="AsymSeg training failed")
        if state.model and state.status is not RunStatus.FAILED:
            self.ui.modelPathLineEdit.currentPath = state.model
            if self.parameters is not None:
                self.parameters.lastModel = state.model
        if state.status is RunStatus.FINISHED:
            results = self.logic.importTrainingResults(task)
            for message in results.messages:
                self.appendLog(message)
            if results.charts is not None and results.charts.charts:
                self.lastCharts = results.charts
                chart = preferredChart(results.charts, task.context.get("rarity"))
                if chart is not None:
                    showChart(chart)

    # ------------------------------------------------------------------ results

    def onModelPathChanged(self, path: str) -> None:
        setSettingValue("ModelPath", path)
        self.updateApplyInputs()

    def onUseTrainedModel(self) -> None:
        model = None
        if self.lastTrainingTask is not None:
            model = self.lastTrainingTask.state.model
        if not model and self.parameters is not None:
            model = self.parameters.lastModel
        if model:
            self.ui.modelPathLineEdit.currentPath = model
        else:
            self.ui.resultsStatusLabel.text = "No training has finished in this session or scene yet."

    def updateApplyInputs(self) -> None:
        """One volume selector per channel of the chosen model (else of the Training data panel)."""
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
            selector = self.nodeSelector(["vtkMRMLScalarVolumeNode"], f"Volume for the model's channel '{name}'",
                                         showChildNodeTypes=False)
            if index < len(previous) and previous[index] is not None:
                selector.setCurrentNode(previous[index])
            selector.connect("currentNodeChanged(vtkMRMLNode*)", lambda *_: self.updateButtons())
            layout.addRow(f"{name}:", selector)
            self.applySelectors.append(selector)
        self.updateButtons()

    def onApply(self) -> None:
        if self.task is not None and self.task.running:
            return
        with slicer.util.tryWithErrorDisplay("AsymSeg could not apply the model.", waitCursor=True):
            if not self._ensureEngineReady():
                return
            model = self.ui.modelPathLineEdit.currentPath
            volumes = [s.currentNode() for s in self.applySelectors]
            root = self.ui.outputFolderPathLineEdit.currentPath or os.path.join(os.path.expanduser("~"), "AsymSeg")
            folder = timestampedFolder(Path(root) / "inference", volumes[0].GetName() if volumes[0] else "case")
            prepared = self.logic.prepareInference(model, volumes, folder, self.ui.groundTruthSelector.currentNode(),
                                                   self.device())
            task = self.logic.startInference(prepared)
            task.context["reference"] = volumes[0]
            self._watch(task)

    def _inferenceFinished(self, task: EngineTask) -> None:
        state = task.state
        if state.status is not RunStatus.FINISHED:
            self.ui.resultsStatusLabel.text = richText(state.statusLine(), ERROR_COLOR)
            if state.status is RunStatus.FAILED and self.interactive:
                slicer.util.errorDisplay(state.message, detailedText=state.hint, windowTitle="AsymSeg inference failed")
            return
        reference = task.context.get("reference")
        results = self.logic.importInferenceResults(task, reference)
        slicer.util.setSliceViewerLayers(background=reference, fit=True)
        text = f"New segmentation '{results.segmentation.GetName()}'."
        if results.metricsTable is not None:
            text += f" Metrics in table '{results.metricsTable.GetName()}'."
        if results.charts is not None and results.charts.charts:
            self.lastCharts = results.charts
            showChart(preferredChart(results.charts, {n: 1 for n in list(results.charts.charts)[1:]}))
            text += " Logit histograms: this case vs the training cases."
        for message in results.messages:
            text += " " + message
        self.ui.resultsStatusLabel.text = richText(text)

    def onShowHistograms(self) -> None:
        if self.lastCharts is not None:
            showChart(preferredChart(self.lastCharts, {n: 1 for n in list(self.lastCharts.charts)[1:]}))

    # ------------------------------------------------------------------ lifetime

    def onSceneClosed(self) -> None:
        """The scene is gone: a running task can no longer import its results; stop it."""
        if self.task is not None and self.task.running:
            self.task.cancel(getattr(self.logic, "cancelTimeout", 60.0))
        self.analysis = None
        self.lastCharts = None
        self._rebuildCaseTable([])
        self._fillClassesTable()

    def cleanup(self) -> None:
        self._classesTimer.stop()
        if self.task is not None and self.task.running:
            self.task.cancel(5.0)
            try:
                self.task.wait(timeout=10.0)
            except TimeoutError:
                self.task.process.killTree()
        self._timer.stop()
        if self.parameters is not None and self._guiTag is not None:
            self.parameters.disconnectGui(self._guiTag)
            self._guiTag = None
