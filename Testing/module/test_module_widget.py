"""The Qt panel (AsymSegLib/Widget.py) driven with fake Qt widgets built from the real .ui, real MRML,
and the fake engine: the panels' flows run here; only real Qt/PythonQt behaviour needs Slicer."""

from __future__ import annotations

import importlib
import sys
import time
import types
from pathlib import Path

import pytest
import slicer

import fakeqt
from asymseg_module_testing import MODULE_DIR, addVolume, blobCase, ijkToRas

from AsymSegLib.Devices import GpuInfo
from AsymSegLib.Logic import AsymSegCoreLogic
from AsymSegLib.ParameterNode import fieldDefaults
from AsymSegLib.Runs import RunStatus

FAKE = Path(__file__).resolve().parent / "fake_engine"
UI = MODULE_DIR / "Resources" / "UI" / "AsymSeg.ui"


class FakeParameters:
    """Stand-in for the parameterNodeWrapper class (attributes with defaults, GUI binding recorded)."""

    def __init__(self, node):
        for name, value in fieldDefaults().items():
            setattr(self, name, value)
        self.parameterNode = node
        self.connected = None

    def connectGui(self, ui):
        self.connected = ui
        return "tag"

    def disconnectGui(self, tag):
        self.connected = None


@pytest.fixture
def panelFactory(mrml, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "qt", fakeqt.qtModule())
    monkeypatch.setattr(slicer, "qMRMLNodeComboBox", fakeqt.FakeNodeComboBox, raising=False)
    app = types.SimpleNamespace(processEvents=lambda: None, setOverrideCursor=lambda *a: None,
                                restoreOverrideCursor=lambda: None, testingEnabled=lambda: True)
    monkeypatch.setattr(slicer, "app", app, raising=False)
    errors = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda *a, **k: errors.append(a[0]))
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **k: None)
    fakeqt.QSettings.store = {"AsymSeg/OutputFolder": str(tmp_path / "runs")}
    sys.modules.pop("AsymSegLib.Widget", None)
    widget = importlib.import_module("AsymSegLib.Widget")
    monkeypatch.setattr(widget, "parameterNodeClass", lambda: FakeParameters)
    monkeypatch.setattr(widget, "listGpus", lambda: [GpuInfo(0, "Fake GPU", 2048)])
    node = mrml.scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "AsymSeg")

    def make():
        ui = fakeqt.uiFromFile(UI)
        panel = widget.AsymSegPanel(ui, AsymSegCoreLogic(python=sys.executable, engineDirectory=FAKE,
                                                         cancelTimeout=20), interactive=False)
        panel.setParameterNode(node)
        return panel

    yield types.SimpleNamespace(make=make, errors=errors, node=node)
    sys.modules.pop("AsymSegLib.Widget", None)  # later tests must not see the fake-qt import


def runTimer(panel, timeout=60.0):
    deadline = time.time() + timeout
    while panel._timer.active:
        panel._timer.fireIfActive()
        assert time.time() < deadline, "\n".join(panel.ui.logTextEdit.lines[-20:])
        time.sleep(0.02)


def fillCases(panel, count=3):
    panel.ui.channelNamesLineEdit.text = "t1, t2"
    panel.ui.channelNamesLineEdit.editingFinished.emit()
    for index in range(count):
        image, label = blobCase(index)
        matrix = ijkToRas(origin=(index, 0.0, 0.0))
        panel.ui.addCaseButton.click()
        row = panel.rows[-1]
        row.channelSelectors[0].setCurrentNode(addVolume(image, f"c{index}_t1", matrix))
        row.channelSelectors[1].setCurrentNode(addVolume(image + 1, f"c{index}_t2", matrix))
        row.annotationSelector.setCurrentNode(addVolume(label, f"c{index}_label", matrix, labelmap=True))
    panel._classesTimer.fireIfActive()


def test_data_classes_technique_panels(panelFactory):
    panel = panelFactory.make()
    ui = panel.ui
    assert panel.parameters.connected is ui and ui.presetComboBox.currentData == "asymmetric-focal"
    assert "(recommended)" in ui.presetComboBox.currentText
    assert [value for _, value in ui.deviceComboBox.items] == ["auto", "cpu", "cuda:0"]
    assert not ui.startButton.enabled
    fillCases(panel)
    assert ui.casesTable.headers == ["t1", "t2", "Annotation", "Role", "Check"] and ui.casesTable.rowCount == 3
    assert [r.roleSelector.currentText for r in panel.rows] == ["train", "train", "validation"]
    assert "consistent" in ui.dataIssuesLabel.text and all("&#10003;" in r.statusLabel.text for r in panel.rows)
    assert ui.classesTable.rowCount == 2 and ui.classesTable.item(1, 0).text == "label_1"
    assert ":" in ui.classesTable.item(1, 3).text and ui.classesTable.cellWidget(1, 4).checked
    assert not ui.classesTable.cellWidget(0, 4).enabled  # background is never rare
    assert ui.startButton.enabled
    ui.classesTable.cellWidget(1, 4).setChecked(False)
    assert '"label_1": 0.0' in panel.parameters.rarityJson
    # a geometry problem shows inline and blocks Start
    image, label = blobCase(9)
    panel.rows[0].annotationSelector.setCurrentNode(addVolume(label[:20], "bad", labelmap=True))
    assert "Error" in ui.dataIssuesLabel.text and "differs" in ui.dataIssuesLabel.text
    assert "fix" in panel.rows[0].statusLabel.text and not ui.startButton.enabled
    # technique: the preset's own fields only, with its defaults
    ui.presetComboBox.setCurrentIndex(ui.presetComboBox.findData("asymmetric-combination"))
    assert panel.parameters.preset == "asymmetric-combination" and panel.parameters.margin == 0.5
    assert ui.marginSpinBox.visible and ui.mixupAlphaSpinBox.visible and not ui.pBgSpinBox.visible
    ui.presetComboBox.setCurrentIndex(ui.presetComboBox.findData("vanilla"))
    assert not ui.gammaSpinBox.visible and not ui.advancedTechniqueGroupBox.enabled
    ui.deviceComboBox.setCurrentIndex(1)
    assert fakeqt.QSettings.store["AsymSeg/Device"] == "cpu"


def test_saved_scene_restores_the_cases(panelFactory):
    panel = panelFactory.make()
    fillCases(panel, count=2)
    nodes = [[s.currentNode() for s in r.channelSelectors] for r in panel.rows]
    restored = panelFactory.make()  # a new panel on the same parameter node (scene reload / module re-entry)
    assert restored.ui.channelNamesLineEdit.text == "t1, t2"
    assert [[s.currentNode() for s in r.channelSelectors] for r in restored.rows] == nodes
    assert [r.annotationSelector.currentNode().GetName() for r in restored.rows] == ["c0_label", "c1_label"]


def test_start_train_show_histograms_apply(panelFactory, monkeypatch):
    panel = panelFactory.make()
    ui = panel.ui
    fillCases(panel)
    panel.parameters.iterations = 4
    panel.parameters.patchZ = panel.parameters.patchY = panel.parameters.patchX = 16
    original = panel.logic.prepareTraining

    def prepare(*args, **kwargs):  # the fake engine writes logit statistics when asked in the job
        prepared = original(*args, **kwargs)
        import json
        job = json.loads(prepared.jobPath.read_text())
        job["fake"] = {"statistics": True, "iterations": 4}
        prepared.jobPath.write_text(json.dumps(job))
        return prepared

    monkeypatch.setattr(panel.logic, "prepareTraining", prepare)
    ui.startButton.click()
    assert ui.cancelButton.enabled and not ui.startButton.enabled
    runTimer(panel)
    state = panel.lastTrainingTask.state
    assert state.status is RunStatus.FINISHED, ui.logTextEdit.lines
    assert ui.progressBar.value == 100 and "Finished" in ui.statusLabel.text
    assert "validation @ 4" in ui.metricsLabel.text
    assert ui.modelPathLineEdit.currentPath == state.model == panel.parameters.lastModel
    assert any(line.startswith("Run folder:") for line in ui.logTextEdit.lines)
    assert ui.showHistogramsButton.enabled and panel.lastCharts is not None
    plotView = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLPlotViewNode")
    assert plotView.GetPlotChartNodeID() == panel.lastCharts.charts["label_1"].GetID()
    # results: the model's channels give the input selectors
    assert [label for label, _ in ui.applyInputsWidget.layout().rows] == ["t1:", "t2:"]
    assert not ui.applyButton.enabled
    target = panel.rows[2]
    for selector, channel in zip(panel.applySelectors, target.channelSelectors):
        selector.setCurrentNode(channel.currentNode())
    ui.groundTruthSelector.setCurrentNode(target.annotationSelector.currentNode())
    assert ui.applyButton.enabled
    ui.applyButton.click()
    runTimer(panel)
    assert "New segmentation" in ui.resultsStatusLabel.text, ui.resultsStatusLabel.text
    assert "Metrics in table" in ui.resultsStatusLabel.text and "Logit histograms" in ui.resultsStatusLabel.text
    assert slicer.mrmlScene.GetFirstNodeByName("c2_t1 AsymSeg") is not None
    assert not panelFactory.errors


def test_cancel_then_resume_and_failure_display(panelFactory, monkeypatch):
    panel = panelFactory.make()
    ui = panel.ui
    fillCases(panel, count=2)
    panel.parameters.iterations = 100000
    panel.parameters.patchZ = panel.parameters.patchY = panel.parameters.patchX = 16
    original = panel.logic.prepareTraining

    def slow(*args, **kwargs):
        prepared = original(*args, **kwargs)
        import json
        job = json.loads(prepared.jobPath.read_text())
        job["fake"] = {"iterations": 100000, "sleep": 0.05}
        prepared.jobPath.write_text(json.dumps(job))
        return prepared

    monkeypatch.setattr(panel.logic, "prepareTraining", slow)
    ui.startButton.click()
    deadline = time.time() + 30
    while panel.task.state.iteration < 2:
        panel._timer.fireIfActive()
        assert time.time() < deadline
        time.sleep(0.02)
    assert "left" in ui.progressBar.format and "iteration" in ui.statusLabel.text
    ui.cancelButton.click()
    assert "Cancelling" in ui.statusLabel.text
    runTimer(panel)
    assert panel.lastTrainingTask.state.status is RunStatus.CANCELLED
    assert "Cancelled" in ui.statusLabel.text and ui.resumeButton.enabled and ui.startButton.enabled
    # an engine failure: message and hint in the status line, no modal dialog in tests
    def failing(*args, **kwargs):
        prepared = original(*args, **kwargs)
        import json
        job = json.loads(prepared.jobPath.read_text())
        job["fake"] = {"mode": "error"}
        prepared.jobPath.write_text(json.dumps(job))
        return prepared

    monkeypatch.setattr(panel.logic, "prepareTraining", failing)
    ui.startButton.click()
    runTimer(panel)
    assert panel.lastTrainingTask.state.status is RunStatus.FAILED
    assert "geometry differs" in ui.statusLabel.text and "Resample" in ui.statusLabel.text
    assert not ui.resumeButton.enabled
