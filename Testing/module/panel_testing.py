"""The panel under test: AsymSegPanel on fake Qt widgets built from the real .ui, real MRML, the fake engine and
fakes of its injected collaborators (parameters, devices, case store); ``panelFactory`` (a fixture, registered in
conftest.py) and the helpers that drive it."""

from __future__ import annotations

import importlib
import json
import sys
import time
import types
from pathlib import Path

import pytest
import slicer

import fakeqt
from asymseg_module_testing import MODULE_DIR, QT_FILES, FakeDependencies, addVolume, blobCase, ijkToRas

from AsymSegLib.Devices import GpuInfo, deviceChoices
from AsymSegLib.Logic import AsymSegCoreLogic
from AsymSegLib.ParameterNode import fieldDefaults

FAKE = Path(__file__).resolve().parent / "fake_engine"
UI = MODULE_DIR / "Resources" / "UI" / "AsymSeg.ui"
QT_MODULES = [f"AsymSegLib.{Path(name).stem}" for name in QT_FILES]


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


class FakeDevices:
    def choices(self):
        return deviceChoices([GpuInfo(0, "Fake GPU", 2048)])


class FakeCaseStore:
    """The case table in memory, by parameter node ID."""

    def __init__(self):
        self.saved: dict = {}

    def load(self, parameterNode):
        return self.saved.get(parameterNode.GetID(), ([], []))

    def save(self, parameterNode, cases, channelNames):
        self.saved[parameterNode.GetID()] = (list(cases), list(channelNames))


def popQtModules():
    for name in QT_MODULES:
        sys.modules.pop(name, None)


@pytest.fixture
def panelFactory(mrml, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "qt", fakeqt.qtModule())
    monkeypatch.setitem(sys.modules, "ctk", fakeqt.ctkModule())
    monkeypatch.setattr(slicer, "qMRMLNodeComboBox", fakeqt.FakeNodeComboBox, raising=False)
    app = types.SimpleNamespace(processEvents=lambda: None, setOverrideCursor=lambda *a: None,
                                restoreOverrideCursor=lambda: None, testingEnabled=lambda: True)
    monkeypatch.setattr(slicer, "app", app, raising=False)
    errors = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda *a, **k: errors.append(a[0]))
    layers = []  # the calls of setSliceViewerLayers (the slice views are Slicer's)
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **k: layers.append(k))
    fakeqt.QSettings.store = {"AsymSeg/OutputFolder": str(tmp_path / "runs")}
    popQtModules()
    widget = importlib.import_module("AsymSegLib.Widget")
    monkeypatch.setattr(widget, "parameterNodeClass", lambda: FakeParameters)
    node = mrml.scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "AsymSeg")
    store = FakeCaseStore()

    def make(dependencies=None, caseStore=None, interactive=False):
        ui = fakeqt.uiFromFile(UI)
        logic = AsymSegCoreLogic(python=sys.executable, engineDirectory=FAKE, cancelTimeout=20)
        panel = widget.AsymSegPanel(ui, logic, dependencies or FakeDependencies(), FakeDevices(), caseStore or store,
                                    interactive=interactive)
        panel.setParameterNode(node)
        return panel

    yield types.SimpleNamespace(make=make, errors=errors, node=node, store=store, layers=layers)
    popQtModules()  # later tests must not see the fake-qt imports


def runTimer(panel, timeout=60.0, poller=None):
    """Poll the panel's engine task (or ``poller``'s) until it ends, as the Qt timer would."""
    poller = poller or panel.poller
    deadline = time.time() + timeout
    while poller.timer.active:
        poller.timer.fireIfActive()
        assert time.time() < deadline, "\n".join(panel.ui.logTextEdit.lines[-20:])
        time.sleep(0.02)


def planRows(ui) -> list[tuple]:
    table = ui.planTable
    return [tuple(table.item(row, column).text for column in range(4)) for row in range(table.rowCount)]


def fillCases(panel, count=3):
    panel.ui.channelNamesLineEdit.text = "t1, t2"
    panel.ui.channelNamesLineEdit.editingFinished.emit()
    for index in range(count):
        image, label = blobCase(index)
        matrix = ijkToRas(origin=(index, 0.0, 0.0))
        panel.ui.addCaseButton.click()
        row = panel.cases.rows[-1]
        row.channelSelectors[0].setCurrentNode(addVolume(image, f"c{index}_t1", matrix))
        row.channelSelectors[1].setCurrentNode(addVolume(image + 1, f"c{index}_t2", matrix))
        row.annotationSelector.setCurrentNode(addVolume(label, f"c{index}_label", matrix, labelmap=True))
    panel.classes.timer.fireIfActive()


def fakeJob(monkeypatch, panel, **fake):
    """Make the panel's trainings run the fake engine with ``fake`` (its ``fake`` job object)."""
    original = panel.logic.prepareTraining

    def prepare(*args, **kwargs):
        prepared = original(*args, **kwargs)
        job = json.loads(prepared.jobPath.read_text())
        job["fake"] = fake
        prepared.jobPath.write_text(json.dumps(job))
        return prepared

    monkeypatch.setattr(panel.logic, "prepareTraining", prepare)


def smallTraining(panel, iterations=4):
    panel.parameters.iterations = iterations
    panel.parameters.patchZ = panel.parameters.patchY = panel.parameters.patchX = 16
