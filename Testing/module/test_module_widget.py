"""The Qt panel (AsymSegLib/Widget.py and its sections) driven with fake Qt widgets built from the real .ui,
real MRML, the fake engine and fakes of its injected collaborators (dependencies, devices, case store):
the panels' flows run here; only real Qt/PythonQt behaviour needs Slicer."""

from __future__ import annotations

import json
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import slicer

import fakeqt
from asymseg_module_testing import FakeDependencies, addSegmentation, addVolume, blobCase, readVolumeFile
from panel_testing import fakeJob, fillCases, planRows, runTimer, smallTraining

from AsymSegLib.CaseStore import ParameterNodeCaseStore
from AsymSegLib.ParameterNode import TECHNIQUE_FIELDS
from AsymSegLib.Presets import PRESETS, SETTINGS
from AsymSegLib.Runs import RunStatus



def test_data_classes_technique_panels(panelFactory):
    panel = panelFactory.make()
    ui = panel.ui
    assert panel.parameters.connected is ui and ui.presetComboBox.currentData == "asymmetric-focal"
    assert "(recommended)" in ui.presetComboBox.currentText
    assert [value for _, value in ui.deviceComboBox.items] == ["auto", "cpu", "cuda:0"]
    assert not ui.startButton.enabled
    fillCases(panel)
    assert ui.casesTable.headers == ["t1", "t2", "Annotation", "ROI mask (optional)", "Role", "Check"]
    assert ui.casesTable.rowCount == 3
    assert [r.roleSelector.currentText for r in panel.cases.rows] == ["train", "train", "validation"]
    cases, channels = panelFactory.store.saved[panelFactory.node.GetID()]  # every edit is saved
    assert channels == ["t1", "t2"] and [c.role for c in cases] == ["train", "train", "validation"]
    assert cases[2].annotation.GetName() == "c2_label"
    assert "consistent" in ui.dataIssuesLabel.text and all("&#10003;" in r.statusLabel.text for r in panel.cases.rows)
    assert ui.classesTable.rowCount == 2 and ui.classesTable.item(1, 0).text == "label_1"
    assert ":" in ui.classesTable.item(1, 3).text and ui.classesTable.cellWidget(1, 4).checked
    assert not ui.classesTable.cellWidget(0, 4).enabled  # background is never rare
    assert ui.startButton.enabled
    ui.classesTable.cellWidget(1, 4).setChecked(False)
    assert '"label_1": 0.0' in panel.parameters.rarityJson
    # a geometry problem shows inline and blocks Start
    image, label = blobCase(9)
    panel.cases.rows[0].annotationSelector.setCurrentNode(addVolume(label[:20], "bad", labelmap=True))
    assert "Error" in ui.dataIssuesLabel.text and "differs" in ui.dataIssuesLabel.text
    assert "fix" in panel.cases.rows[0].statusLabel.text and not ui.startButton.enabled
    # technique: the preset's own fields only, with its defaults
    ui.presetComboBox.setCurrentIndex(ui.presetComboBox.findData("asymmetric-combination"))
    assert panel.parameters.preset == "asymmetric-combination" and panel.parameters.gamma == 1.5
    assert ui.marginSpinBox.visible and ui.mixupAlphaSpinBox.visible and not ui.pBgSpinBox.visible
    ui.presetComboBox.setCurrentIndex(ui.presetComboBox.findData("vanilla"))
    assert not ui.gammaSpinBox.visible and not ui.advancedTechniqueGroupBox.enabled
    ui.deviceComboBox.setCurrentIndex(1)
    assert fakeqt.QSettings.store["AsymSeg/Device"] == "cpu"


def test_technique_section_is_built_from_the_presets(panelFactory, monkeypatch):
    panel = panelFactory.make()
    ui = panel.ui
    assert ui.presetComboBox.items == [(p.displayLabel(), name) for name, p in PRESETS.items()]
    for key, setting in SETTINGS.items():
        spinBox, label = getattr(ui, f"{TECHNIQUE_FIELDS[key]}SpinBox"), getattr(ui, f"{TECHNIQUE_FIELDS[key]}Label")
        assert spinBox.range == (setting.minimum, setting.maximum) and spinBox.decimals == setting.decimals, key
        assert spinBox.toolTip == setting.tooltip and label.text == f"{setting.label}:", key
    for name, preset in PRESETS.items():
        ui.presetComboBox.setCurrentIndex(ui.presetComboBox.findData(name))
        assert {key: getattr(panel.parameters, TECHNIQUE_FIELDS[key]) for key in preset.defaults} == preset.defaults
        assert [key for key in SETTINGS if getattr(ui, f"{TECHNIQUE_FIELDS[key]}SpinBox").visible] == \
            [key for key in SETTINGS if key in preset.settingKeys], name
    # another range in SETTINGS reaches the spin box: the .ui's own range is overridden
    technique = sys.modules["AsymSegLib.TechniqueSection"]
    margin = types.SimpleNamespace(key="margin", label="Margin (test)", default=1.0, minimum=0.25, maximum=4.5,
                                   decimals=3, tooltip="From SETTINGS.")
    monkeypatch.setattr(technique, "SETTINGS", {**SETTINGS, "margin": margin})
    ui = panelFactory.make().ui
    assert ui.marginSpinBox.range == (0.25, 4.5) and ui.marginSpinBox.decimals == 3
    assert ui.marginLabel.text == "Margin (test):" and ui.marginSpinBox.toolTip == "From SETTINGS."


def test_saved_scene_restores_the_cases(panelFactory):
    store = ParameterNodeCaseStore()  # the real store: the table goes through the parameter node
    panel = panelFactory.make(caseStore=store)
    fillCases(panel, count=2)
    nodes = [[s.currentNode() for s in r.channelSelectors] for r in panel.cases.rows]
    restored = panelFactory.make(caseStore=store)  # a new panel on the same parameter node (scene reload / re-entry)
    assert restored.ui.channelNamesLineEdit.text == "t1, t2"
    assert [[s.currentNode() for s in r.channelSelectors] for r in restored.cases.rows] == nodes
    assert [r.annotationSelector.currentNode().GetName() for r in restored.cases.rows] == ["c0_label", "c1_label"]


def test_missing_engine_packages_are_installed_only_when_the_user_agrees(panelFactory, monkeypatch):
    answers, questions = [False, True], []
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay",
                        lambda question, **kwargs: questions.append(question) or answers.pop(0), raising=False)
    dependencies = FakeDependencies(missing=["torch", "monai>=1.3"])
    panel = panelFactory.make(dependencies=dependencies)  # not interactive: nobody to ask, nothing installed
    fillCases(panel)
    smallTraining(panel)
    panel.ui.startButton.click()
    assert not questions and not dependencies.installed and panel.poller.task is None
    assert panel.ui.statusLabel.text == "The engine needs: torch, monai. Install them to train."
    panel = panelFactory.make(dependencies=dependencies, interactive=True)  # the same cases, restored
    panel.classes.timer.fireIfActive()
    smallTraining(panel)
    panel.ui.startButton.click()  # the user declines
    assert questions == ["Install torch, monai?"] and not dependencies.installed and panel.poller.task is None
    panel.ui.startButton.click()  # the user agrees: installed, then the training starts
    assert dependencies.installed == ["torch, monai"] and panel.poller.running
    runTimer(panel)
    assert panel.run.lastTrainingTask.state.status is RunStatus.FINISHED and not panelFactory.errors
    panel.ui.startButton.click()  # installed now: no more questions
    assert len(questions) == 2 and dependencies.installed == ["torch, monai"]
    runTimer(panel)


def test_start_train_show_margins_apply(panelFactory, monkeypatch, tmp_path):
    panel = panelFactory.make()
    ui = panel.ui
    fillCases(panel)
    smallTraining(panel)
    fakeJob(monkeypatch, panel, statistics=True, iterations=4)  # the fake engine writes logit statistics
    ui.startButton.click()
    assert ui.cancelButton.enabled and not ui.startButton.enabled
    runTimer(panel)
    state = panel.run.lastTrainingTask.state
    assert state.status is RunStatus.FINISHED, ui.logTextEdit.lines
    assert ui.progressBar.value == 100 and "Finished" in ui.statusLabel.text
    assert "validation @ 4" in ui.metricsLabel.text
    assert ui.modelPathLineEdit.currentPath == state.model == panel.parameters.lastModel
    runFolder = Path(ui.logTextEdit.lines[0].removeprefix("Run folder: "))
    assert runFolder.parent == tmp_path / "runs" and runFolder.name.endswith("_asymmetric-focal")
    assert ui.showMarginsButton.enabled and panel.results.charts is not None
    plotView = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLPlotViewNode")
    assert plotView.GetPlotChartNodeID() == panel.results.charts.charts["label_1"].GetID()
    # the fake's validation statistics: 82 of 400 label_1 voxels below 0 (1 mm voxels), none in training
    assert ui.marginSummaryLabel.text == (  # the rare classes only: no background sentence
        "<span>label_1: 20% of the validation cases' voxels (0.082 mL) are on the wrong side of the boundary "
        "(missed), against 0.0% on the training cases; dz -1.12 (paper's measure).</span>")
    # results: the model's channels give the input selectors
    assert [label for label, _ in ui.applyInputsWidget.layout().rows] == ["t1:", "t2:"]
    assert not ui.applyButton.enabled
    target = panel.cases.rows[2]
    for selector, channel in zip(panel.results.applySelectors, target.channelSelectors):
        selector.setCurrentNode(channel.currentNode())
    ui.groundTruthSelector.setCurrentNode(target.annotationSelector.currentNode())
    assert ui.applyButton.enabled
    ui.applyButton.click()
    runTimer(panel)
    assert "New segmentation" in ui.resultsStatusLabel.text, ui.resultsStatusLabel.text
    assert "Metrics in table" in ui.resultsStatusLabel.text and "Margin charts" in ui.resultsStatusLabel.text
    assert "label_1: 2" in ui.marginSummaryLabel.text and "of this case's voxels" in ui.marginSummaryLabel.text
    assert slicer.mrmlScene.GetFirstNodeByName("c2_t1 AsymSeg") is not None
    assert [p.name.endswith("_c2_t1") for p in (tmp_path / "runs" / "inference").iterdir()] == [True]
    assert not panelFactory.errors


def segmentVoxels(segmentation, reference) -> int:
    segmentId = segmentation.GetSegmentation().GetNthSegmentID(0)
    return int(slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, reference).sum())


def test_apply_shows_where_the_model_hesitates_and_offsets_relabel_live(panelFactory, monkeypatch):
    """The fake engine's probabilities: an overlay for the rare class, sliders that relabel the prediction,
    the calibrated offsets of the model, apply and reset; the user's volumes stay as they were."""
    panel = panelFactory.make()
    ui = panel.ui
    fillCases(panel)
    smallTraining(panel)
    fakeJob(monkeypatch, panel, iterations=2, calibration={"offsets": {"label_1": 1.5}, "criterion": "validation DSC"})
    ui.startButton.click()
    runTimer(panel)
    target = panel.cases.rows[2]
    volume = target.channelSelectors[0].currentNode()
    voxels = np.array(slicer.util.arrayFromVolume(volume), copy=True)
    for selector, channel in zip(panel.results.applySelectors, target.channelSelectors):
        selector.setCurrentNode(channel.currentNode())
    assert ui.showProbabilitiesCheckBox.checked  # on by default (the .ui)
    ui.applyButton.click()
    runTimer(panel)
    assert "New segmentation" in ui.resultsStatusLabel.text, ui.resultsStatusLabel.text
    overlay = slicer.mrmlScene.GetFirstNodeByName("c2_t1 label_1 probability")
    assert overlay is not None and list(panel.results.overlays.values()) == [overlay]
    assert "Where the model hesitates: 'c2_t1 label_1 probability'" in ui.resultsStatusLabel.text
    assert panelFactory.layers[-1] == {"foreground": overlay, "foregroundOpacity": 0.5}
    segmentation = slicer.mrmlScene.GetFirstNodeByName("c2_t1 AsymSeg")
    predicted = segmentVoxels(segmentation, volume)
    assert predicted == int((voxels > 1.5).sum())  # the fake engine's prediction
    sliders = panel.results.offsets.sliders
    assert list(sliders) == ["label_1"] and sliders["label_1"].value == 0.0
    assert (sliders["label_1"].minimum, sliders["label_1"].maximum) == (-5.0, 5.0)
    assert "calibrated: +1.50 (validation DSC)" in sliders["label_1"].toolTip
    assert ui.applyOffsetsButton.enabled and ui.resetOffsetsButton.enabled and ui.useCalibratedOffsetsButton.enabled
    counts, shown = [], predicted
    for value in (-5.0, -1.0, 1.0, 5.0):
        sliders["label_1"].value = value
        assert panel.results.offsets.timer.active and segmentVoxels(segmentation, volume) == shown  # debounced
        panel.results.offsets.timer.fireIfActive()
        shown = segmentVoxels(segmentation, volume)
        counts.append(shown)
    assert counts == sorted(counts) and counts[0] < predicted < counts[-1], counts
    assert "Preview, not applied: offsets label_1 +5.00" in ui.offsetsStatusLabel.text
    ui.useCalibratedOffsetsButton.click()
    assert sliders["label_1"].value == 1.5 and panel.results.offsets.timer.active
    ui.applyOffsetsButton.click()  # within the delay: the calibrated offsets are shown first, then kept
    calibrated = segmentVoxels(segmentation, volume)
    assert counts[2] <= calibrated < counts[3] and not panel.results.offsets.timer.active  # no longer +5
    assert segmentation.GetName() == "c2_t1 AsymSeg (logit offsets label_1 +1.50)"
    table = slicer.mrmlScene.GetFirstNodeByName("c2_t1 AsymSeg logit offsets")
    assert slicer.util.arrayFromTableColumn(table, "label_1 voxels").tolist() == [predicted, calibrated]
    assert f"table '{table.GetName()}'" in ui.offsetsStatusLabel.text
    ui.resetOffsetsButton.click()
    assert sliders["label_1"].value == 0.0 and not panel.results.offsets.timer.active
    assert segmentation.GetName() == "c2_t1 AsymSeg" and segmentVoxels(segmentation, volume) == predicted
    ui.showProbabilitiesCheckBox.setChecked(False)  # hides the overlay
    assert panelFactory.layers[-1] == {"foreground": None, "foregroundOpacity": 0.5}
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), voxels)
    assert volume.GetName() == "c2_t1" and not panelFactory.errors


def test_cancel_then_resume_and_failure_display(panelFactory, monkeypatch):
    panel = panelFactory.make()
    ui = panel.ui
    fillCases(panel, count=2)
    smallTraining(panel, iterations=100000)
    fakeJob(monkeypatch, panel, iterations=100000, sleep=0.05)
    ui.startButton.click()
    deadline = time.time() + 30
    while panel.poller.task.state.iteration < 2:
        panel.poller.timer.fireIfActive()
        assert time.time() < deadline
        time.sleep(0.02)
    assert "left" in ui.progressBar.format and "iteration" in ui.statusLabel.text
    ui.cancelButton.click()
    assert "Cancelling" in ui.statusLabel.text
    runTimer(panel)
    assert panel.run.lastTrainingTask.state.status is RunStatus.CANCELLED
    assert "Cancelled" in ui.statusLabel.text and ui.resumeButton.enabled and ui.startButton.enabled
    # an engine failure: message and hint in the status line, no modal dialog in tests
    fakeJob(monkeypatch, panel, mode="error")  # replaces the job's whole fake object
    ui.startButton.click()
    runTimer(panel)
    assert panel.run.lastTrainingTask.state.status is RunStatus.FAILED
    assert "geometry differs" in ui.statusLabel.text and "Resample" in ui.statusLabel.text
    assert not ui.resumeButton.enabled


def test_plan_shows_values_sources_and_reasons_before_start(panelFactory, monkeypatch):
    panel = panelFactory.make()
    ui = panel.ui
    assert not ui.planButton.enabled and ui.planTable.headers == ["Setting", "Value", "Source", "Why"]
    fillCases(panel)
    assert ui.planButton.enabled and ui.startButton.enabled
    panel.parameters.batchSize, panel.parameters.timeBudgetMinutes = 2, 6.0  # under Advanced, and the budget
    ui.planButton.click()
    assert panel.planPoller.running and not ui.planButton.enabled and ui.cancelButton.enabled
    assert ui.startButton.enabled  # Start never waits for a plan
    assert ui.planSummaryLabel.text == "<span>Starting the engine...</span>"
    runTimer(panel, poller=panel.planPoller)
    assert not panelFactory.errors and ui.planButton.enabled and not ui.cancelButton.enabled
    assert ui.planSummaryLabel.text == ("<span>Plan: about 6 min of training (budget 6 min) on cpu: fake CPU, "
                                        "2 cores, 0.50 s per iteration.</span>")
    rows = {row[0]: row[1:] for row in planRows(ui)}
    assert list(rows)[:6] == ["Target spacing", "Patch size", "Batch size", "Iterations", "Learning rate",
                              "Validation interval"]
    assert rows["Target spacing"] == ("1.5 x 1.2 x 1 mm", "planned",  # the exported images' (z, y, x) spacing
                                      "the images' own spacing gives a patch enough context")
    assert rows["Batch size"] == ("2", "set by you", "set in the job")
    assert rows["Iterations"] == ("576", "planned", "80% of the 6-minute budget at 0.50 s per iteration measured "
                                                    "on this device")
    assert ui.logTextEdit.lines[-1] == "Plan: about 6 min of training (budget 6 min) on cpu: fake CPU, 2 cores, " \
                                       "0.50 s per iteration."
    assert not list(Path(tempfile.gettempdir()).glob("AsymSegPlan_*")), "the plan's temporary export is left"
    assert panel.run.lastTrainingTask is None  # planning trains nothing
    # a new case makes the plan stale: it is cleared
    ui.addCaseButton.click()
    assert ui.planTable.rowCount == 0 and "press Plan" in ui.planSummaryLabel.text


def test_start_while_planning_cancels_the_plan_and_shows_the_trainings_own(panelFactory, monkeypatch):
    panel = panelFactory.make()
    ui = panel.ui
    fillCases(panel)
    smallTraining(panel)
    fakeJob(monkeypatch, panel, plan_sleep=30, iterations=4)
    ui.planButton.click()
    planTask = panel.planPoller.task
    deadline = time.time() + 30
    while planTask.state.phase != "plan":  # the engine is planning (and listens to SIGTERM)
        panel.planPoller.timer.fireIfActive()
        assert time.time() < deadline, planTask.log
        time.sleep(0.02)
    assert ui.planSummaryLabel.text == "<span>Planning from the cases and the device 0/1...</span>"
    ui.startButton.click()  # while the engine is still planning
    assert panel.poller.running and planTask.process.cancelRequested
    assert "plans this training first" in ui.planSummaryLabel.text and ui.planTable.rowCount == 0
    runTimer(panel, poller=panel.planPoller, timeout=20)
    assert planTask.state.status is RunStatus.CANCELLED and "plans this training first" in ui.planSummaryLabel.text
    assert "fake plan cancelled" in planTask.log and "fake plan cancelled" not in ui.logTextEdit.lines
    runTimer(panel)
    assert panel.run.lastTrainingTask.state.status is RunStatus.FINISHED, ui.logTextEdit.lines
    rows = {row[0]: row[1:] for row in planRows(ui)}  # the training's own plan event
    assert rows["Iterations"][:2] == ("4", "set by you") and rows["Patch size"][:2] == ("16 x 16 x 16 voxels",
                                                                                        "set by you")
    assert rows["Learning rate"][:2] == ("0.001", "planned")
    assert ui.planSummaryLabel.text.startswith("<span>Plan: about")
    assert ui.logTextEdit.lines.count(panel.run.shownPlan.summary()) == 1  # the training's plan, in its log
    assert not panelFactory.errors


def test_a_failed_plan_says_why(panelFactory, monkeypatch):
    panel = panelFactory.make()
    fillCases(panel)
    fakeJob(monkeypatch, panel, mode="error")
    panel.ui.planButton.click()
    runTimer(panel, poller=panel.planPoller)
    text = panel.ui.planSummaryLabel.text
    errorColor = sys.modules["AsymSegLib.QtUtils"].ERROR_COLOR
    assert text.startswith(f"<span style='color:{errorColor}'>No plan: ") and "mask's geometry differs" in text
    assert "Resample the mask" in text and panel.ui.planTable.rowCount == 0


def test_advanced_settings_and_the_roi_mask_reach_the_job(panelFactory):
    panel = panelFactory.make()
    ui = panel.ui
    for name in ("iterations", "batchSize", "learningRate", "validationInterval", "patchZ", "patchY", "patchX"):
        spinBox = getattr(ui, f"{name}SpinBox")  # auto at the minimum, which the parameter's default is
        assert spinBox.specialValueText == "auto" and spinBox.range[0] == getattr(panel.parameters, name) == 0, name
    assert [data for _, data in ui.targetSpacingComboBox.items] == ["auto", "native", "custom"]
    assert not ui.spacingZSpinBox.enabled
    ui.targetSpacingComboBox.setCurrentIndex(2)
    assert panel.parameters.targetSpacing == "custom" and ui.spacingZSpinBox.enabled
    fillCases(panel, count=2)
    panel.parameters.spacingZ, panel.parameters.earlyStopping, panel.parameters.timeBudgetMinutes = 3.0, True, 2.5
    # an ROI mask: one segment of a segmentation on case 1
    row = panel.cases.rows[0]
    reference = row.channelSelectors[0].currentNode()
    inside = np.zeros((24, 24, 24), np.uint8)
    inside[2:20] = 1
    inside[20:] = 2
    roi = addSegmentation(inside, reference, {1: "brain", 2: "air"}, name="c0_roi")
    assert not row.maskSegmentSelector.visible
    row.maskSelector.setCurrentNode(roi)
    assert [text for text, _ in row.maskSegmentSelector.items] == ["all segments", "brain", "air"]
    assert row.maskSegmentSelector.visible
    row.maskSegmentSelector.setCurrentIndex(1)
    saved = panelFactory.store.saved[panelFactory.node.GetID()][0][0]
    assert (saved.mask, saved.maskSegment) == (roi, roi.GetSegmentation().GetNthSegmentID(0))
    ui.startButton.click()
    runTimer(panel)
    assert panel.run.lastTrainingTask.state.status is RunStatus.FINISHED, ui.logTextEdit.lines
    runFolder = Path(ui.logTextEdit.lines[0].removeprefix("Run folder: "))
    job = json.loads((runFolder / "job.json").read_text())
    assert job["target_spacing"] == [3.0, 1.0, 1.0] and job["early_stopping"] is True
    assert job["time_budget_minutes"] == 2.5 and not {"iterations", "batch_size", "patch_size"} & set(job)
    assert job["cases"][0]["mask"] == "masks/000_c0_t1.nrrd" and "mask" not in job["cases"][1]
    exported = slicer.util.arrayFromVolume(readVolumeFile(runFolder / job["cases"][0]["mask"]))
    np.testing.assert_array_equal(exported, (inside == 1).astype(np.uint8))
    # the restored panel shows the same mask and segment
    restored = panelFactory.make().cases.rows[0]
    assert restored.maskSelector.currentNode() is roi and restored.maskSegmentSelector.currentIndex == 1
