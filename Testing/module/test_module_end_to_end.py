"""End to end with the REAL engine child process (AsymSegTrainer) on generated data, CPU, tiny network.

Skipped only when the engine package truly cannot be imported (conftest.engineAvailable).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
import slicer

from asymseg_module_testing import addSegmentation, addVolume, blobCase, engineAvailable, ijkToRas

from AsymSegLib.Cases import CaseInput
from AsymSegLib.Events import ProgressEvent
from AsymSegLib.Geometry import Geometry
from AsymSegLib.JobSpec import PLANNED_FIELDS, TrainingSettings
from AsymSegLib.Logic import AsymSegCoreLogic
from AsymSegLib.Runs import RunStatus

AVAILABLE, REASON = engineAvailable()
pytestmark = pytest.mark.skipif(not AVAILABLE, reason=REASON)

TINY = {"name": "unet", "channels": [4, 8], "strides": [2], "num_res_units": 1}


def settings(iterations=3, **extra) -> TrainingSettings:
    return TrainingSettings(preset="asymmetric-focal", iterations=iterations, patchSize=(16, 16, 16), batchSize=2,
                            learningRate=1e-3, validationInterval=2, device="cpu", network=dict(TINY), extra=extra)


def makeCases():
    """Two channels; training cases with a labelmap and a segmentation, one validation case."""
    cases = []
    for index, (role, kind) in enumerate([("train", "labelmap"), ("train", "segmentation"),
                                          ("validation", "labelmap")]):
        image, label = blobCase(10 + index)
        matrix = ijkToRas(origin=(index * 3.0, -2.0, 1.0))
        channels = [addVolume(image, f"case{index}_t1", matrix), addVolume(image * 0.5 + 1, f"case{index}_t2", matrix)]
        if kind == "labelmap":
            annotation = addVolume(label, f"case{index}_label", matrix, labelmap=True)
        else:
            annotation = addSegmentation(label, channels[0], {1: "lesion"}, name=f"case{index}_seg")
        cases.append(CaseInput(channels, annotation, role))
    # the labelmaps' class is named 'lesion' too, through a user colour table
    table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLColorTableNode", "classes")
    table.SetTypeToUser()
    table.SetNumberOfColors(2)
    table.SetColor(1, "lesion", 0.9, 0.2, 0.1, 1.0)
    for case in cases:
        if case.annotation.IsA("vtkMRMLLabelMapVolumeNode"):
            case.annotation.GetDisplayNode().SetAndObserveColorNodeID(table.GetID())
    return cases


def inputSnapshot(scene, cases):
    arrays = {}
    for case in cases:
        for node in case.images:
            arrays[node.GetID()] = np.array(slicer.util.arrayFromVolume(node), copy=True)
        annotation = case.annotation
        if annotation.IsA("vtkMRMLVolumeNode"):
            arrays[annotation.GetID()] = np.array(slicer.util.arrayFromVolume(annotation), copy=True)
        else:
            seg = annotation.GetSegmentation()
            arrays[annotation.GetID()] = [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())]
    return scene.GetNumberOfNodes(), arrays


def test_train_infer_import_with_the_real_engine(mrml, tmp_path):
    cases = makeCases()
    nodesBefore, arraysBefore = inputSnapshot(mrml.scene, cases)
    logic = AsymSegCoreLogic(python=sys.executable)

    prepared = logic.prepareTraining(cases, ["t1", "t2"], settings(), tmp_path / "run")
    assert prepared.job["classes"] == {"background": [0], "lesion": [1]}
    assert mrml.scene.GetNumberOfNodes() == nodesBefore
    task = logic.startTraining(prepared)
    state = task.wait(timeout=300)
    log = "\n".join(task.log[-30:])
    assert state.status is RunStatus.FINISHED, f"{state.message} {state.hint}\n{log}"

    types = [e.type.value for e in task.events]
    assert types[0] == "start" and types[-1] == "done", types
    train = [e.iteration for e in task.events if isinstance(e, ProgressEvent) and e.phase == "train"]
    assert train[0] == 1 and train[-1] == 3 and train == sorted(set(train))  # throttled, in order
    phases = [e.phase for e in task.events if isinstance(e, ProgressEvent)]
    assert phases.index("load") < phases.index("train") < phases.index("logit-statistics")
    assert "validation" in types and "checkpoint" in types
    assert state.model and state.model.endswith(".pt")
    assert (prepared.outputFolder / "model_last.pt").is_file()

    results = logic.importTrainingResults(task)
    charts = results.charts
    assert charts is not None and set(charts.charts) == {"background", "lesion"}
    for className, chart in charts.charts.items():
        sides = [chart.GetNthPlotSeriesNode(i).GetAttribute("AsymSeg.Side")
                 for i in range(chart.GetNumberOfPlotSeriesNodes())]
        assert sides == ["train", "unseen", "boundary"], (className, sides)
    assert "the validation cases' voxels" in charts.sentences["lesion"] and "dz " in charts.sentences["lesion"]

    target = cases[2]
    inference = logic.prepareInference(state.model, target.images, tmp_path / "infer",
                                       groundTruth=target.annotation, device="cpu")
    inferTask = logic.startInference(inference)
    inferState = inferTask.wait(timeout=300)
    assert inferState.status is RunStatus.FINISHED, f"{inferState.message}\n" + "\n".join(inferTask.log[-20:])
    imported = logic.importInferenceResults(inferTask, target.images[0], name="case2 prediction")
    segmentation = imported.segmentation
    seg = segmentation.GetSegmentation()
    assert [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())] == ["lesion"]
    assert seg.GetNthSegment(0).GetColor() == pytest.approx((0.9, 0.2, 0.1), abs=0.01)
    reference = segmentation.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())
    assert reference is target.images[0]
    prediction = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, seg.GetNthSegmentID(0), target.images[0])
    assert prediction.shape == slicer.util.arrayFromVolume(target.images[0]).shape
    assert imported.metricsTable is not None and imported.metricsTable.GetNumberOfRows() >= 1
    assert imported.charts is not None and "lesion" in imported.charts.charts
    # the engine's probabilities: an overlay on the input grid, and offsets starting from its label map
    assert not imported.messages, imported.messages
    overlay = imported.overlays["lesion"]
    assert list(imported.overlays) == ["lesion"] and overlay.GetName() == "case2_t1 lesion probability"
    assert Geometry.fromVolume(overlay).differences(Geometry.fromVolume(target.images[0])) == []
    assert 0.0 <= slicer.util.arrayFromVolume(overlay).min() and slicer.util.arrayFromVolume(overlay).max() <= 1.0
    np.testing.assert_array_equal(imported.offsets.labels({}) > 0, prediction > 0)
    assert imported.offsets.labels({"lesion": -100.0}).max() == 0
    # corrected, the prediction is a training case of its volumes, channels named as the model's
    case, channels = logic.trainingCaseFromPrediction(segmentation)
    assert case.images == target.images and case.annotation is segmentation and channels == ["t1", "t2"]

    # the next case to annotate: the engine's rank reads the module's export; its ranking file parses
    ranking = logic.prepareRanking(state.model, [CaseInput(c.images) for c in cases], tmp_path / "rank", device="cpu")
    rankTask = logic.startRanking(ranking)
    rankState = rankTask.wait(timeout=300)
    assert rankState.status is RunStatus.FINISHED, f"{rankState.message}\n" + "\n".join(rankTask.log[-20:])
    assert [e.case for e in rankTask.events if isinstance(e, ProgressEvent) and e.phase == "rank"] == \
        sorted(ranking.cases)
    ranked = logic.importRanking(rankTask)
    assert ranked.rareClasses == ["lesion"] and [c.rank for c in ranked.cases] == [1, 2, 3]
    assert sorted(c.case for c in ranked.cases) == sorted(ranking.cases)
    scores = [c.score for c in ranked.cases]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)

    # inputs unchanged; new nodes only added (segmentation, tables, charts), none removed or replaced
    nodesAfter, arraysAfter = inputSnapshot(mrml.scene, cases)
    assert nodesAfter > nodesBefore
    for nodeId, before in arraysBefore.items():
        assert mrml.scene.GetNodeByID(nodeId) is not None
        if isinstance(before, list):
            assert arraysAfter[nodeId] == before
        else:
            np.testing.assert_array_equal(arraysAfter[nodeId], before)


def test_cancel_mid_run_with_the_real_engine(mrml, tmp_path):
    cases = makeCases()
    logic = AsymSegCoreLogic(python=sys.executable)
    prepared = logic.prepareTraining(cases, ["t1", "t2"], settings(iterations=100000, logit_statistics=False),
                                     tmp_path / "run")
    task = logic.startTraining(prepared)
    deadline = time.time() + 240
    while task.state.iteration < 2:
        task.poll()
        assert not task.process.finished, "\n".join(task.log[-20:])
        assert time.time() < deadline
        time.sleep(0.05)
    task.cancel(timeout=60)
    state = task.wait(timeout=120)
    assert state.status is RunStatus.CANCELLED, f"{state.message}\n" + "\n".join(task.log[-20:])
    assert state.exitCode == 10 and not task.process.killed
    assert (prepared.outputFolder / "model_last.pt").is_file()
    assert task.events[-1].type.value == "done" and task.events[-1].status == "cancelled"
    assert task.process.aliveProcesses() == []


def test_engine_error_surfaces_with_its_message(mrml, tmp_path):
    image, label = blobCase(20)
    volume = addVolume(image, "img")
    misplaced = addVolume(label[:20], "label_other_grid", labelmap=True)  # a different grid
    cases = [CaseInput([volume], misplaced, "train")]
    logic = AsymSegCoreLogic(python=sys.executable)
    # the module's own check would block this; the engine must catch it too
    prepared = logic.prepareTraining(cases, ["img"], settings(), tmp_path / "run", allowErrors=True)
    task = logic.startTraining(prepared)
    state = task.wait(timeout=240)
    assert state.status is RunStatus.FAILED
    assert state.exitCode == 3, state.exitCode
    assert state.errors and state.message == state.errors[-1].message
    assert "geometry" in state.message.lower() and "000_img" in state.message, state.message
    assert "(annotation 'label_other_grid' of img (row 1))" in state.message, state.message  # the node, not a file
    assert state.hint


def test_plan_with_roi_masks_with_the_real_engine(mrml, tmp_path):
    """The engine's plan command on the module's job (ROI masks included): every planned field has a value,
    a source and a reason; the setting the panel set is kept."""
    cases = makeCases()
    region = np.zeros((24, 24, 24), np.uint8)
    region[2:22, 2:22, 2:22] = 1
    cases[0].mask = addVolume(region, "case0_roi", ijkToRas(origin=(0.0, -2.0, 1.0)), labelmap=True)
    cases[1].mask = addSegmentation(region, cases[1].images[0], {1: "brain"}, name="case1_roi")
    cases[1].maskSegment = cases[1].mask.GetSegmentation().GetNthSegmentID(0)
    logic = AsymSegCoreLogic(python=sys.executable)
    prepared = logic.preparePlan(cases, ["t1", "t2"], TrainingSettings(batchSize=2, device="cpu",
                                                                       timeBudgetMinutes=1.0))
    assert [c.get("mask") for c in prepared.job["cases"]] == ["masks/000_case0_t1.nrrd", "masks/001_case1_t1.nrrd",
                                                              None]
    task = logic.startPlan(prepared)
    state = task.wait(timeout=300)
    assert state.status is RunStatus.FINISHED, f"{state.message} {state.hint}\n" + "\n".join(task.log[-20:])
    plan = logic.finishPlan(task)
    assert not prepared.folder.exists()
    assert set(plan.settings) >= set(PLANNED_FIELDS) and all(plan.reasons.get(f) for f in PLANNED_FIELDS)
    assert plan.settings["batch_size"] == 2 and plan.source["batch_size"] == "user"
    assert {plan.source[f] for f in PLANNED_FIELDS if f != "batch_size"} == {"plan"}
    assert plan.device["type"] == "cpu" and plan.stepSeconds > 0 and plan.estimatedMinutes > 0
    assert plan.timeBudgetMinutes == 1.0 and plan.summary() in task.log
