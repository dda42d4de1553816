"""The clinician's loop: a corrected prediction becomes a training case, fine-tuning from its model, and the next
case to annotate (the engine's ``rank``), with real MRML, the fake engine and the panel on fake Qt."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import slicer

from asymseg_module_testing import SHAPE, addSegmentation, addVolume, blobCase, ijkToRas, readVolumeFile
from panel_testing import FAKE, FakeCaseStore, fillCases, runTimer, smallTraining

from AsymSegLib.Classes import discoverClasses
from AsymSegLib.FineTune import FINE_TUNING_SHARE
from AsymSegLib.Logic import AsymSegCoreLogic
from AsymSegLib.Runs import RunStatus
from AsymSegLib.SceneExport import exportCases


def fakeModel(folder: Path, channels, classes, rarity=None, **fake) -> Path:
    """A model file of the fake engine with the job.json a training writes beside it."""
    out = folder / "out"
    out.mkdir(parents=True)
    job = {"channels": list(channels), "classes": {name: [value] for value, name in enumerate(classes)},
           "rarity": rarity or {name: float(value > 0) for value, name in enumerate(classes)}, "fake": fake}
    (out / "job.json").write_text(json.dumps(job))
    model = out / "model_best.pt"
    model.write_bytes(b"fake")
    return model


def caseVolumes(seed: int, name: str):
    """Two channels of a new, unlabelled case."""
    image, _ = blobCase(seed)
    matrix = ijkToRas(origin=(seed, 0.0, 0.0))
    return [addVolume(image, f"{name}_t1", matrix), addVolume(image + 1, f"{name}_t2", matrix)]


def applyModel(panel, model, volumes):
    """Apply ``model`` to ``volumes`` with the panel's Apply button; returns the imported prediction."""
    panel.ui.modelPathLineEdit.currentPath = str(model)
    panel.results.setApplyVolumes(volumes)
    panel.ui.applyButton.click()
    runTimer(panel)
    prediction = panel.retrain.prediction()
    assert prediction is not None and "New segmentation" in panel.ui.resultsStatusLabel.text
    return prediction


def showDialogs(monkeypatch):
    """Errors go to the (recorded) error dialog, as in Slicer outside its self tests."""
    monkeypatch.setattr(slicer.app, "testingEnabled", lambda: False)


# ---------------------------------------------------------------------------- correct and retrain

def test_a_corrected_prediction_becomes_a_training_case_of_its_volumes(mrml, tmp_path):
    volumes = caseVolumes(4, "new")
    model = fakeModel(tmp_path / "run", ["t1", "t2"], ["background", "label_1"])
    logic = AsymSegCoreLogic(python=sys.executable, engineDirectory=FAKE)
    task = logic.startInference(logic.prepareInference(model, volumes, tmp_path / "infer"))
    assert task.wait(timeout=60).status is RunStatus.FINISHED
    prediction = logic.importInferenceResults(task, volumes[0]).segmentation
    case, channels = logic.trainingCaseFromPrediction(prediction)
    assert case.images == volumes and case.annotation is prediction and case.role == "train"
    assert channels == ["t1", "t2"]
    # the user corrects it (Segment Editor): half of the lesion erased; the training case holds the edit
    segmentId = prediction.GetSegmentation().GetSegmentIdBySegmentName("label_1")
    predicted = slicer.util.arrayFromSegmentBinaryLabelmap(prediction, segmentId, volumes[0]) > 0
    edited = predicted.copy()
    edited[: SHAPE[0] // 2] = False
    assert 0 < edited.sum() < predicted.sum()
    slicer.util.updateSegmentBinaryLabelmapFromArray(edited.astype(np.uint8), prediction, segmentId, volumes[0])
    assert discoverClasses([case]).catalog.names == ["background", "label_1"]  # the model's classes
    export = exportCases([case], channels, tmp_path / "export")
    label = slicer.util.arrayFromVolume(readVolumeFile(tmp_path / "export" / export.cases[0].label))
    np.testing.assert_array_equal(label, edited.astype(np.uint8))
    # a segmentation that is no prediction, and a prediction whose volume was removed, are refused by name
    other = addSegmentation(edited.astype(np.uint8), volumes[0], {1: "label_1"}, name="drawn by hand")
    with pytest.raises(ValueError, match="'drawn by hand' is not a prediction"):
        logic.trainingCaseFromPrediction(other)
    mrml.scene.RemoveNode(volumes[1])
    with pytest.raises(ValueError, match=r"channel\(s\) \[2\] of 'new_t1 AsymSeg' is no longer in the scene"):
        logic.trainingCaseFromPrediction(prediction)


def test_use_as_training_case_adds_one_row_and_refuses_a_duplicate(panelFactory, tmp_path):
    panel = panelFactory.make()
    ui = panel.ui
    fillCases(panel, count=2)
    assert not ui.useAsTrainingCaseButton.enabled  # no prediction yet
    model = fakeModel(tmp_path / "run", ["t1", "t2"], ["background", "label_1"])
    volumes = caseVolumes(5, "new")
    prediction = applyModel(panel, model, volumes)
    assert ui.predictionSelector.attributes == {"vtkMRMLSegmentationNode": {"AsymSeg.Prediction": None}}
    assert ui.useAsTrainingCaseButton.enabled
    ui.useAsTrainingCaseButton.click()
    assert len(panel.cases.rows) == 3
    row = panel.cases.rows[2]
    assert [s.currentNode() for s in row.channelSelectors] == volumes
    assert row.annotationSelector.currentNode() is prediction and row.roleSelector.currentText == "train"
    assert ui.retrainStatusLabel.text.startswith("<span style='color:#2e7d32'>Training case 3 added: 'new_t1', "
                                                 "'new_t2' with 'new_t1 AsymSeg' as its annotation (role train).")
    saved, channels = panelFactory.store.saved[panelFactory.node.GetID()]  # saved with the scene
    assert channels == ["t1", "t2"] and saved[2].annotation is prediction and len(saved) == 3
    panel.classes.timer.fireIfActive()
    assert panel.classes.analysis.catalog.names == ["background", "label_1"]  # the segments match the labels
    assert not [i for i in panel.cases.issues if i.isError], panel.cases.issues
    ui.useAsTrainingCaseButton.click()  # the same prediction again
    assert len(panel.cases.rows) == 3
    assert "'new_t1 AsymSeg' is already training case 3 in Training data: not added again." in \
        ui.retrainStatusLabel.text
    # an empty table takes the model's channels; a table of other channels refuses the case
    empty = panelFactory.make(caseStore=FakeCaseStore())
    assert empty.cases.rows == [] and empty.cases.channelNames() == ["image"]
    empty.retrain.showPrediction(prediction)
    empty.ui.useAsTrainingCaseButton.click()
    assert empty.ui.channelNamesLineEdit.text == "t1, t2" and len(empty.cases.rows) == 1
    assert empty.ui.casesTable.headers[:2] == ["t1", "t2"]
    single = panelFactory.make(caseStore=FakeCaseStore())
    single.ui.channelNamesLineEdit.text = "t1"
    single.ui.channelNamesLineEdit.editingFinished.emit()
    single.ui.addCaseButton.click()
    single.retrain.showPrediction(prediction)
    with pytest.raises(ValueError, match=r"The case has 2 volume\(s\) but the training cases have 1 channel\(s\) "
                                         r"\(t1\)"):
        single.ui.useAsTrainingCaseButton.click()
    assert len(single.cases.rows) == 1 and not panelFactory.errors


def test_fine_tune_refuses_a_model_of_other_channels_or_classes(panelFactory, monkeypatch, tmp_path):
    panel = panelFactory.make()
    ui = panel.ui
    fillCases(panel)
    assert not ui.fineTuneButton.enabled  # no model yet
    panel.parameters.lastModel = str(fakeModel(tmp_path / "one", ["t1"], ["background", "label_1"]))
    panel.updateButtons()
    assert ui.fineTuneButton.enabled and panel.parameters.lastModel in ui.fineTuneButton.toolTip
    with pytest.raises(ValueError, match=r"The model takes the channels 't1'; the training data has 't1', 't2'\. "
                                         r"Name the channels in Training data as the model's"):
        ui.fineTuneButton.click()
    panel.parameters.lastModel = str(fakeModel(tmp_path / "tumor", ["T1", "T2"], ["background", "tumor"]))
    showDialogs(monkeypatch)
    with pytest.raises(ValueError) as raised:
        ui.fineTuneButton.click()
    message = str(raised.value)
    assert "channels" not in message  # the names differ only in case
    assert "The model's classes are 'background', 'tumor'; the training data's are 'background', 'label_1' " \
           "(missing from the training data: 'tumor'; not in the model: 'label_1')." in message
    assert panelFactory.errors == [f"AsymSeg could not start the fine-tuning.\n\n{message}"]
    assert panel.poller.task is None and panel.run.lastTrainingTask is None
    assert not (tmp_path / "runs").exists()  # nothing exported


def test_fine_tune_starts_from_the_predictions_model_with_a_third_of_the_budget(panelFactory, tmp_path):
    panel = panelFactory.make()
    ui = panel.ui
    fillCases(panel)
    smallTraining(panel, iterations=9)
    panel.parameters.timeBudgetMinutes = 12.0
    model = fakeModel(tmp_path / "model", ["t1", "t2"], ["background", "label_1"])
    applyModel(panel, model, caseVolumes(6, "new"))
    ui.useAsTrainingCaseButton.click()
    panel.classes.timer.fireIfActive()
    # the last model trained does not fit: the prediction's own model is the one fine-tuned
    panel.parameters.lastModel = str(fakeModel(tmp_path / "other", ["t1"], ["background", "label_1"]))
    panel.updateButtons()
    ui.fineTuneButton.click()
    assert panel.poller.running and not ui.fineTuneButton.enabled
    runTimer(panel)
    state = panel.run.lastTrainingTask.state
    assert state.status is RunStatus.FINISHED, ui.logTextEdit.lines
    runFolder = Path(ui.logTextEdit.lines[0].removeprefix("Run folder: "))
    assert runFolder.name.endswith("_asymmetric-focal_fine-tune")
    job = json.loads((runFolder / "job.json").read_text())
    assert job["initial_checkpoint"] == str(model.resolve())
    assert job["time_budget_minutes"] == pytest.approx(12.0 * FINE_TUNING_SHARE) == pytest.approx(4.0)
    assert job["iterations"] == 3 and job["patch_size"] == [16, 16, 16] and len(job["cases"]) == 4
    assert job["classes"] == {"background": [0], "label_1": [1]}
    text = f"Fine-tuning {model} on 4 case(s) with a third of the time budget (4 min); progress in Run."
    assert text in ui.logTextEdit.lines and ui.retrainStatusLabel.text == f"<span>{text}</span>"
    assert panel.parameters.lastModel == state.model  # the fine-tuned model is the next one to apply
    assert not panelFactory.errors


# ---------------------------------------------------------------------------- next case to annotate

def rankCase(name: str, levels: tuple):
    """Two channels: a ball whose upper half has intensity levels[0], lower half levels[1], on 0."""
    grid = np.indices(SHAPE)
    ball = np.sqrt(sum((grid[a] - SHAPE[a] // 2) ** 2 for a in range(3))) <= 6
    image = np.zeros(SHAPE, np.float32)
    image[ball & (grid[0] < SHAPE[0] // 2)] = levels[0]
    image[ball & (grid[0] >= SHAPE[0] // 2)] = levels[1]
    matrix = ijkToRas(spacing=(1.0, 1.0, 2.0))
    return [addVolume(image, f"{name}_t1", matrix), addVolume(image * 2, f"{name}_t2", matrix)]


def expectedScore(volume) -> float:
    """The rank measure on the fake engine's logits (class 1's margin 4 (x - 1.5))."""
    margin = 4.0 * (slicer.util.arrayFromVolume(volume) - 1.5)
    return float((np.abs(margin) < 2).sum() / (margin > -2).sum())


def fillRankCases(panel, cases: list) -> None:
    for volumes in cases:
        panel.ui.addRankCaseButton.click()
        for selector, volume in zip(panel.rank.rows[-1], volumes):
            selector.setCurrentNode(volume)


def rankingRows(ui) -> list[tuple]:
    table = ui.rankingTable
    return [tuple(table.item(row, column).text for column in range(table.columnCount))
            for row in range(table.rowCount)]


def test_rank_exports_the_cases_and_shows_them_ranked(panelFactory, tmp_path):
    panel = panelFactory.make()
    ui = panel.ui
    model = fakeModel(tmp_path / "run", ["t1", "t2"], ["background", "label_1"])
    ui.modelPathLineEdit.currentPath = str(model)
    assert ui.rankCasesTable.headers == ["t1", "t2"]  # the model's channels
    assert ui.rankingTable.headers == ["Rank", "Case", "Score (%)", "Hesitant (mL)", "Candidate (mL)"]
    sure, hesitant = rankCase("sure", (3.0, 3.0)), rankCase("hesitant", (1.5, 1.5))
    mixed = rankCase("mixed", (1.5, 3.0))
    assert not ui.rankButton.enabled
    fillRankCases(panel, [sure, hesitant, mixed])
    assert ui.rankButton.enabled and not ui.cancelRankButton.enabled
    ui.rankButton.click()
    assert ui.cancelRankButton.enabled and not ui.rankButton.enabled and not ui.applyButton.enabled
    runTimer(panel)
    assert not ui.cancelRankButton.enabled and ui.rankButton.enabled
    # exported as the engine's rank reads them: dataset.json and imagesTs/<case>_<channel>.nrrd, the volumes' voxels
    prepared = panel.rank.prepared
    assert prepared.folder.parent == tmp_path / "runs" / "ranking" and prepared.folder.name.endswith("_run")
    dataset = json.loads((prepared.dataset / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "t1", "1": "t2"} and dataset["file_ending"] == ".nrrd"
    ids = ["000_sure_t1", "001_hesitant_t1", "002_mixed_t1"]
    assert sorted(p.name for p in (prepared.dataset / "imagesTs").iterdir()) == \
        sorted(f"{i}_{c:04d}.nrrd" for i in ids for c in range(2))
    for caseId, volumes in zip(ids, [sure, hesitant, mixed]):
        for channel, volume in enumerate(volumes):
            exported = readVolumeFile(prepared.dataset / "imagesTs" / f"{caseId}_{channel:04d}.nrrd")
            np.testing.assert_array_equal(slicer.util.arrayFromVolume(exported), slicer.util.arrayFromVolume(volume))
    # the fake engine's ranking, parsed into the table in its order
    scores = {name: expectedScore(volumes[0]) for name, volumes in
              (("sure_t1", sure), ("hesitant_t1", hesitant), ("mixed_t1", mixed))}
    assert scores["hesitant_t1"] == 1.0 and 0.3 < scores["mixed_t1"] < 0.7 and scores["sure_t1"] == 0.0
    rows = rankingRows(ui)
    assert [row[:3] for row in rows] == [("1", "hesitant_t1", "100.0"),
                                         ("2", "mixed_t1", f"{100 * scores['mixed_t1']:.1f}"), ("3", "sure_t1", "0.0")]
    voxelMl = 2.0 / 1000.0
    ballVoxels = int((slicer.util.arrayFromVolume(hesitant[0]) > 0).sum())
    assert rows[0][3:] == (f"{ballVoxels * voxelMl:.2f}", f"{ballVoxels * voxelMl:.2f}")
    assert ui.rankMeasureLabel.text.startswith("<span>Score: of the volume the model calls (or nearly calls) "
                                               "label_1, the share where it hesitates (margin within ±2 logits")
    assert ui.rankStatusLabel.text == "<span>3 case(s) ranked: annotate 'hesitant_t1' first (100.0%). " \
                                      "Double-click a case to show it.</span>"
    assert ui.rankProgressBar.value == 100
    # a double-click shows the case and chooses its volumes to apply the model to; Show does the same
    ui.rankingTable.fire("cellDoubleClicked(int,int)", 1, 0)
    assert panelFactory.layers[-1] == {"background": mixed[0], "fit": True}
    assert [s.currentNode() for s in panel.results.applySelectors] == mixed
    ui.rankingTable.setCurrentRow(2)
    ui.showRankedCaseButton.click()
    assert panelFactory.layers[-1] == {"background": sure[0], "fit": True}
    assert [s.currentNode() for s in panel.results.applySelectors] == sure
    assert not panelFactory.errors


def test_rank_failures_and_cancel_are_shown(panelFactory, monkeypatch, tmp_path):
    panel = panelFactory.make(interactive=True)
    ui = panel.ui
    model = fakeModel(tmp_path / "vanilla", ["t1", "t2"], ["background", "label_1"],
                      rarity={"background": 0.0, "label_1": 0.0})
    ui.modelPathLineEdit.currentPath = str(model)
    fillRankCases(panel, [rankCase("a", (1.5, 3.0)), rankCase("b", (2.0, 2.0))])
    ui.rankButton.click()
    runTimer(panel)
    errorColor = sys.modules["AsymSegLib.QtUtils"].ERROR_COLOR
    assert ui.rankStatusLabel.text == (f"<span style='color:{errorColor}'>The model {model} marks no class as rare: "
                                       "there is nothing to rank by. Use a model trained with at least one rare "
                                       "class (rarity &gt; 0).</span>")
    assert panelFactory.errors == [f"The model {model} marks no class as rare: there is nothing to rank by."]
    assert ui.rankingTable.rowCount == 0 and not ui.showRankedCaseButton.enabled
    # cancelled while ranking: no table either
    ui.modelPathLineEdit.currentPath = str(fakeModel(tmp_path / "slow", ["t1", "t2"], ["background", "label_1"],
                                                     rank_sleep=0.5))
    ui.rankButton.click()
    ui.cancelRankButton.click()
    runTimer(panel)
    assert panel.rank.ranking is None and ui.rankingTable.rowCount == 0
    assert "Cancelled" in ui.rankStatusLabel.text and len(panelFactory.errors) == 1
    # an error before the engine starts: a dialog naming it
    ui.modelPathLineEdit.currentPath = str(tmp_path / "gone" / "model_best.pt")
    showDialogs(monkeypatch)
    with pytest.raises(FileNotFoundError):
        ui.rankButton.click()
    assert panelFactory.errors[-1] == f"AsymSeg could not rank the cases.\n\nModel file not found: " \
                                      f"{tmp_path / 'gone' / 'model_best.pt'}"


def test_rank_cases_keep_their_volumes_when_the_models_channels_change(panelFactory, tmp_path):
    panel = panelFactory.make()
    ui = panel.ui
    ui.modelPathLineEdit.currentPath = str(fakeModel(tmp_path / "two", ["t1", "t2"], ["background", "label_1"]))
    volumes = rankCase("c", (1.5, 1.5))
    fillRankCases(panel, [volumes])
    ui.modelPathLineEdit.currentPath = str(fakeModel(tmp_path / "one", ["flair"], ["background", "label_1"]))
    assert ui.rankCasesTable.headers == ["flair"] and [s.currentNode() for s in panel.rank.rows[0]] == volumes[:1]
    ui.removeRankCaseButton.click()
    assert panel.rank.cases() == [] and ui.rankCasesTable.rowCount == 0 and not ui.rankButton.enabled
