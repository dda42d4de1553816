"""Importers: prediction -> segmentation, metrics -> table, logit statistics -> margin tables/series/charts."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import slicer

from asymseg_module_testing import addSegmentation, addVolume, blobCase, ijkToRas, writeProbabilityArray

from AsymSegLib.Logic import AsymSegCoreLogic, PreparedInference
from AsymSegLib.LogitPlots import (LogitStatistics, buildMarginCharts, logitShift, marginSentence, preferredChart,
                                   showChart)
from AsymSegLib.ResultImport import importMetrics, importPrediction, metricRows
from AsymSegLib.Runs import RunState, RunStatus
from AsymSegLib.SceneExport import writeLabelArray


def test_prediction_becomes_a_named_coloured_segmentation(mrml, tmp_path):
    image, label = blobCase(0)
    reference = addVolume(image, "input", ijkToRas(spacing=(0.9, 1.1, 2.0), origin=(4.0, -3.0, 8.0)))
    prediction = label.copy()
    prediction[1:3, 1:3, 1:3] = 2
    path = writeLabelArray(prediction, reference, tmp_path / "prediction.nrrd")
    count = mrml.scene.GetNumberOfNodes()
    colors = {"tumor core": (1.0, 0.0, 0.0)}
    node = importPrediction(path, ["background", "tumor core", "edema", "necrosis"], reference,
                            name="input AsymSeg", colors=colors)
    # the temporaries are gone: only the segmentation and its display node were added
    assert mrml.scene.GetNumberOfNodes() - count == 2 and node.GetDisplayNode() is not None
    assert node.GetName() == "input AsymSeg"
    segmentation = node.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == ["tumor core", "edema", "necrosis"]  # class order; 'necrosis' empty but listed
    assert segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("tumor core")).GetColor() == (1.0, 0.0, 0.0)
    for value, name in ((1, "tumor core"), (2, "edema"), (3, "necrosis")):
        array = slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentation.GetSegmentIdBySegmentName(name), reference)
        np.testing.assert_array_equal(array > 0, prediction == value)
    assert node.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()) is reference


def test_prediction_outside_the_classes_is_refused(mrml, tmp_path):
    image, label = blobCase(1)
    reference = addVolume(image, "input")
    path = writeLabelArray(label * 7, reference, tmp_path / "p.nrrd")
    count = mrml.scene.GetNumberOfNodes()
    with pytest.raises(RuntimeError, match="outside"):
        importPrediction(path, ["background", "tumor"], reference)
    assert mrml.scene.GetNumberOfNodes() == count


def test_empty_prediction_still_lists_the_classes(mrml, tmp_path):
    image, label = blobCase(2)
    reference = addVolume(image, "input")
    node = importPrediction(writeLabelArray(np.zeros_like(label), reference, tmp_path / "p.nrrd"),
                            ["background", "tumor"], reference)
    assert node.GetSegmentation().GetNumberOfSegments() == 1
    assert node.GetSegmentation().GetNthSegment(0).GetName() == "tumor"


def test_metrics_table(mrml, tmp_path):
    """An older metrics file (no lesion counts, class indices as keys): voxel columns in percent, lesions n/a."""
    data = {"raw": {"1": {"dsc": 0.8, "sensitivity": 0.7, "precision": 0.9, "hd95": 2.5, "tp": 3},
                    "2": {"dsc": None, "sensitivity": None, "precision": 0.0, "hd95": None}},
            "largest_component": {"1": {"dsc": 0.85, "sensitivity": 0.7, "precision": 1.0, "hd95": 1.0}}}
    path = tmp_path / "prediction_metrics.json"
    path.write_text(json.dumps(data))
    table = importMetrics(path, ["background", "tumor", "edema"], name="case metrics")
    assert table.IsA("vtkMRMLTableNode")
    assert table.GetNumberOfRows() == 3
    assert slicer.util.arrayFromTableColumn(table, "DSC (%)")[0] == pytest.approx(80.0)
    assert slicer.util.arrayFromTableColumn(table, "HD95 (mm)")[0] == pytest.approx(2.5)
    assert np.isnan(slicer.util.arrayFromTableColumn(table, "DSC (%)")[1])
    assert np.isnan(slicer.util.arrayFromTableColumn(table, "Lesions found")).all()
    variants = [table.GetCellText(r, 0) for r in range(3)]
    classes = [table.GetCellText(r, 1) for r in range(3)]
    assert variants == ["None: the network's output as it is"] * 2 + [
        "Largest connected component of each class only (the paper's; every other lesion is deleted)"]
    assert classes == ["tumor", "edema", "tumor"]
    assert metricRows({"tumor": {"dsc": 1.0}})[0]["class"] == "tumor"


def test_metrics_table_shows_lesions_found_missed_and_false_positive(mrml, tmp_path):
    """The engine's infer --label file: raw, chosen (what the segmentation holds) and the largest component."""
    def metrics(dsc, found, fp):
        return {"dsc": dsc, "sensitivity": 0.5, "precision": 0.75, "specificity": 0.999, "hd95": 3.25,
                "reference_voxels": 40, "predicted_voxels": 30, "lesions_reference": 5, "lesions_detected": found,
                "lesions_predicted": found + fp, "lesions_false_positive": fp, "lesion_sensitivity": found / 5,
                "small_lesions_reference": 2}

    data = {"case": "pred", "classes": ["background", "lesion"], "postprocessing": {"lesion": "min-size=10"},
            "written": "chosen", "raw": {"lesion": metrics(0.6, 4, 3)}, "chosen": {"lesion": metrics(0.7, 4, 1)},
            "post": {"lesion": metrics(0.5, 1, 0)}}
    path = tmp_path / "pred_metrics.json"
    path.write_text(json.dumps(data))
    table = importMetrics(path, ["background", "lesion"])
    columns = [table.GetTable().GetColumnName(i) for i in range(table.GetNumberOfColumns())]
    assert columns == ["Post-processing", "Class", "DSC (%)", "Sensitivity (%)", "Precision (%)", "Specificity (%)",
                       "HD95 (mm)", "Lesions in reference", "Lesions found", "Lesions missed",
                       "False-positive lesions", "Lesions found (%)", "Reference voxels", "Predicted voxels"]
    column = lambda name: slicer.util.arrayFromTableColumn(table, name).tolist()  # noqa: E731
    assert column("Lesions found") == [4, 4, 1] and column("Lesions missed") == [1, 1, 4]
    assert column("False-positive lesions") == [3, 1, 0] and column("Lesions found (%)") == pytest.approx([80, 80, 20])
    assert column("DSC (%)") == pytest.approx([60, 70, 50]) and column("HD95 (mm)") == [3.25] * 3
    assert column("Specificity (%)") == pytest.approx([99.9] * 3) and column("Reference voxels") == [40] * 3
    assert [table.GetCellText(r, 0) for r in range(3)] == [
        "None: the network's output as it is",
        "As in the segmentation: lesions smaller than 10 mm³ removed (the model's choice on its validation cases)",
        "Largest connected component of each class only (the paper's; every other lesion is deleted)"]


EDGES = [-2.0, -1.0, 0.0, 1.0, 2.0]


def handRecord(counts, ownMeans, margins, marginUnderflow, volume=None, missed=None, groupedBy="reference"):
    """A two-class record in the engine's format (AsymSegTrainer/logits.py, to_dict), written by hand.

    ``margins``: per class, the margin histogram on ``EDGES``; ``marginUnderflow``: per class, margins below
    -2. The logit histograms are not charted: every logit is counted as underflow.
    """
    g = len(counts)
    zeros = [[0] * g for _ in range(g)]
    means = [[ownMeans[gi] if gi == ci else -ownMeans[gi] for ci in range(g)] for gi in range(g)]
    record = {"format": "asymseg-logit-statistics", "version": 1, "class_names": ["background", "tumor"],
              "channel_names": ["background", "tumor"], "bin_edges": EDGES, "count": counts,
              "histogram": [[[0] * 4 for _ in range(g)] for _ in range(g)],
              "underflow": [[c] * g for c in counts], "overflow": zeros, "mean": means, "m2": zeros,
              "min": [[-3.0] * g for _ in range(g)], "max": [[-2.5] * g for _ in range(g)], "grouped_by": groupedBy}
    if margins is not None:
        record["margins"] = {**{k: record[k] for k in ("format", "version", "class_names", "bin_edges", "count")},
                             "channel_names": ["margin"], "histogram": [[h] for h in margins],
                             "underflow": [[u] for u in marginUnderflow], "overflow": [[0] for _ in range(g)],
                             "mean": [[0.5] for _ in range(g)], "m2": [[1.0] for _ in range(g)],
                             "min": [[-3.0] for _ in range(g)], "max": [[2.0] for _ in range(g)]}
        record["volume_ml"], record["missed_volume_ml"] = volume, missed
    return record


# training: tumour 3 of 100 voxels below 0; this case: 5 underflow + 5 + 10 of 50 below 0
TRAIN = handRecord([1000, 100], [5.0, 4.0], [[0, 0, 100, 900], [0, 3, 20, 77]], [0, 0], [1.0, 0.1], [0.0, 0.003])
CASE = handRecord([400, 50], [5.0, 1.5], [[0, 4, 96, 300], [5, 10, 25, 5]], [0, 5], [0.4, 0.05], [0.004, 0.02])


def test_margin_statistics_and_crossing_rates_from_a_hand_written_file(tmp_path):
    (tmp_path / "train.json").write_text(json.dumps(TRAIN))
    train, case = LogitStatistics.load(tmp_path / "train.json"), LogitStatistics.fromDict(CASE)
    assert train.hasMargins and case.hasMargins
    assert train.crossingRate(1) == pytest.approx(0.03) and case.crossingRate(1) == pytest.approx(0.4)
    assert train.crossingRate(0) == 0.0 and case.crossingRate(0) == pytest.approx(0.01)
    assert logitShift(train, case, 1) == pytest.approx(1.5 - 4.0)
    assert case.missedVolume[1] == pytest.approx(0.02)
    assert marginSentence("tumor", 1, train, case, "this case's") == (
        "tumor: 40% of this case's voxels (0.02 mL) are on the wrong side of the boundary (missed), against "
        "3.0% on the training cases; dz -2.50 (paper's measure).")
    assert marginSentence("background", 0, train, case, "this case's").startswith(
        "background: 1.0% of this case's voxels (0.004 mL) are on the wrong side of the boundary (missed), "
        "against 0.0% on the training cases; dz +0.00")
    byPrediction = LogitStatistics.fromDict({**CASE, "grouped_by": "prediction"})
    assert "without a ground truth the voxels are grouped by the prediction" in marginSentence(
        "tumor", 1, train, byPrediction, "this case's")
    assert marginSentence("tumor", 1, train, None) == \
        "tumor: 3.0% on the training cases on the wrong side of the boundary (missed); no unseen cases."


def test_margin_charts_have_at_most_four_curves_per_class(mrml):
    train, case = LogitStatistics.fromDict(TRAIN), LogitStatistics.fromDict(CASE)
    charts = buildMarginCharts(train, case, name="case7", colors={"tumor": (1, 0, 0)}, unseenLabel="this case",
                               unseenOwner="this case's")
    assert set(charts.charts) == {"background", "tumor"}
    for className, chart in charts.charts.items():
        assert chart.IsA("vtkMRMLPlotChartNode") and chart.GetNumberOfPlotSeriesNodes() <= 4
        series = [chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes())]
        assert [s.GetAttribute("AsymSeg.Side") for s in series] == ["train", "unseen", "boundary"]
        for node in series:
            assert node.GetTableNode().GetTable().GetColumnByName(node.GetYColumnName()) is not None
    tumour = charts.charts["tumor"]
    assert tumour.GetTitle() == "'tumor' margin: 3.0% missed on train vs 40% missed on this case"
    assert tumour.GetAttribute("AsymSeg.Summary") == charts.sentences["tumor"]
    assert [s.GetName() for s in charts.series["tumor"]] == [
        "tumor margin, training cases: 3.0% missed", "tumor margin, this case: 40% missed",
        "tumor decision boundary (margin 0)"]
    assert tumour.GetName() == "case7: tumor margin, training cases vs this case"
    assert charts.tables["tumor"].GetName() == "case7: tumor margin densities"
    assert charts.summary.GetName() == "case7: margin summary"
    assert charts.series["tumor"][2].GetTableNode().GetName() == "case7: decision boundaries"
    assert len(charts.nodes()) == 2 + 2 + 6 + 1 + 1  # charts, their tables, 3 series each, boundary table, summary
    assert charts.series["tumor"][0].GetColor() == (1.0, 0.0, 0.0)
    table = charts.tables["tumor"]
    margin, density = (slicer.util.arrayFromTableColumn(table, c) for c in ("margin", "this case"))
    assert margin.tolist() == [-1.5, -0.5, 0.5, 1.5]
    assert np.sum(density * 1.0) == pytest.approx(45 / 50)  # a density: the in-range share (5 underflow)
    boundary = charts.series["tumor"][2]
    assert slicer.util.arrayFromTableColumn(boundary.GetTableNode(), "margin").tolist() == [0.0, 0.0]
    highest = max(density.max(), slicer.util.arrayFromTableColumn(table, "train").max())  # 77 of 100 in a bin
    assert slicer.util.arrayFromTableColumn(boundary.GetTableNode(), "tumor").tolist() == [0.0, highest] == [0.0, 0.77]
    column = lambda name: slicer.util.arrayFromTableColumn(charts.summary, name).tolist()  # noqa: E731
    assert column("train missed (%)") == pytest.approx([0.0, 3.0])
    assert column("unseen missed (%)") == pytest.approx([1.0, 40.0])
    assert column("unseen missed (mL)") == pytest.approx([0.004, 0.02]) and column("dz") == pytest.approx([0.0, -2.5])
    assert preferredChart(charts, {"background": 0, "tumor": 1}) is tumour
    showChart(tumour)
    plotView = mrml.scene.GetFirstNodeByClass("vtkMRMLPlotViewNode")
    assert plotView is not None and plotView.GetPlotChartNodeID() == tumour.GetID()


def test_margin_charts_without_unseen_cases_or_voxels_of_a_class(mrml):
    empty = handRecord([1000, 0], [5.0, 0.0], [[0, 0, 100, 900], [0, 0, 0, 0]], [0, 0])
    charts = buildMarginCharts(LogitStatistics.fromDict(empty), None)
    assert list(charts.charts) == ["background"]
    assert [s.GetAttribute("AsymSeg.Side") for s in charts.series["background"]] == ["train", "boundary"]
    with pytest.raises(ValueError, match="format"):
        LogitStatistics.fromDict({"format": "something else"})
    with pytest.raises(ValueError, match="'margins' counts other voxels"):
        LogitStatistics.fromDict({**CASE, "margins": {**CASE["margins"], "count": [1, 2]}})


def test_a_file_without_margins_still_reads_and_says_so(mrml, tmp_path):
    """An older engine's files: no margins, so no charts; the segmentation is imported and the message says
    which file lacks them and what to do."""
    old = handRecord([400, 50], [5.0, 1.5], None, None)
    assert not LogitStatistics.fromDict(old).hasMargins
    with pytest.raises(ValueError, match="need margins"):
        buildMarginCharts(LogitStatistics.fromDict(TRAIN), LogitStatistics.fromDict(old))
    image, label = blobCase(6)
    reference = addVolume(image, "case8")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "logit_statistics_train.json").write_text(json.dumps(TRAIN))
    prediction = writeLabelArray(label, reference, tmp_path / "prediction.nrrd")
    (tmp_path / "prediction_logits.json").write_text(json.dumps(old))
    prepared = PreparedInference(tmp_path, tmp_path / "model" / "model_best.pt", [], prediction, None,
                                 ["background", "tumor"], {})
    state = RunState(kind="infer", status=RunStatus.FINISHED, outputs={"prediction": str(prediction)})
    task = types.SimpleNamespace(state=state, context={"prepared": prepared})
    imported = AsymSegCoreLogic().importInferenceResults(task, reference)
    assert imported.segmentation is not None and imported.charts is None
    assert f"Margins not available for {tmp_path / 'prediction_logits.json'}; re-run inference." in imported.messages
    # a training whose statistics predate the margins
    out = tmp_path / "run"
    out.mkdir()
    (out / "logit_statistics_train.json").write_text(json.dumps(old))
    (out / "logit_statistics_validation.json").write_text(json.dumps(CASE))
    task = types.SimpleNamespace(state=RunState(status=RunStatus.FINISHED), outputFolder=out, context={})
    results = AsymSegCoreLogic().importTrainingResults(task)
    assert results.charts is None and results.messages == [
        f"Margins not available for {out / 'logit_statistics_train.json'}; train the model again to chart them."]


def _folderOf(node) -> int:
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    return shNode.GetItemParent(shNode.GetItemByDataNode(node))


def test_an_inference_import_goes_into_one_folder_and_shows_the_prediction_alone(mrml, tmp_path):
    """Every node an import makes (segmentation, metrics table, overlay, charts, their tables and series, the
    offsets table) is in ONE subject-hierarchy folder named after the run; plain names; the other visible
    segmentations are hidden while the prediction is shown, and get their visibility back when it is hidden,
    removed or restored."""
    image, label = blobCase(9)
    reference = addVolume(image, "BraTS_001_flair")
    visible = addSegmentation(label, reference, {1: "tumor"}, name="my annotation")
    hidden = addSegmentation(label, reference, {1: "tumor"}, name="my hidden annotation")
    hidden.GetDisplayNode().SetVisibility(False)
    run = tmp_path / "20250101-120000_BraTS_001_flair"
    (run / "model").mkdir(parents=True)
    (run / "model" / "logit_statistics_train.json").write_text(json.dumps(TRAIN))
    prediction = writeLabelArray(label, reference, run / "prediction.nrrd")
    (run / "prediction_logits.json").write_text(json.dumps(CASE))
    (run / "prediction_metrics.json").write_text(json.dumps(
        {"raw": {"1": {"dsc": 0.8, "sensitivity": 0.75, "precision": 0.9, "hd95": 2.5}}}))
    probabilities = np.stack([1.0 - 0.9 * label, 0.9 * label + 0.05], axis=-1)
    writeProbabilityArray(probabilities / probabilities.sum(axis=-1, keepdims=True), reference,
                          run / "prediction_probabilities.nii.gz")
    prepared = PreparedInference(run, run / "model" / "model_best.pt", [], prediction, None, ["background", "tumor"],
                                 {})
    state = RunState(kind="infer", status=RunStatus.FINISHED, outputs={"prediction": str(prediction)})
    task = types.SimpleNamespace(state=state, context={"prepared": prepared, "classes": ["background", "tumor"]})
    before = {mrml.scene.GetNthNode(i).GetID() for i in range(mrml.scene.GetNumberOfNodes())}
    logic = AsymSegCoreLogic()

    imported = logic.importInferenceResults(task, reference)

    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml.scene)
    assert imported.folder and shNode.GetItemName(imported.folder) == "AsymSeg 20250101-120000_BraTS_001_flair"
    assert shNode.GetItemParent(imported.folder) == shNode.GetSceneItemID()
    created = [mrml.scene.GetNthNode(i) for i in range(mrml.scene.GetNumberOfNodes())]
    created = [n for n in created if n.GetID() not in before]
    data = [n for n in created if not n.IsA("vtkMRMLDisplayNode") and not n.IsA("vtkMRMLStorageNode")
            and not n.IsA("vtkMRMLSubjectHierarchyNode")]
    assert imported.charts is not None and imported.metricsTable is not None and imported.overlays
    expected = {imported.segmentation, imported.metricsTable, *imported.overlays.values(), *imported.charts.nodes()}
    assert {n.GetID() for n in data} == {n.GetID() for n in expected}
    assert all(_folderOf(n) == imported.folder for n in data), [n.GetName() for n in data
                                                                if _folderOf(n) != imported.folder]
    names = sorted(n.GetName() for n in data)
    assert not [n for n in names if "[" in n or n.startswith("z")], names
    assert "BraTS_001_flair AsymSeg: tumor margin, training cases vs this case" in names
    assert "tumor margin, training cases: 3.0% missed" in names and "BraTS_001_flair AsymSeg metrics" in names
    columns = [imported.metricsTable.GetTable().GetColumnName(i)
               for i in range(imported.metricsTable.GetNumberOfColumns())]
    assert {"DSC (%)", "Sensitivity (%)", "Precision (%)", "HD95 (mm)"} <= set(columns)
    assert slicer.util.arrayFromTableColumn(imported.metricsTable, "DSC (%)")[0] == pytest.approx(80.0)
    # the offsets table goes beside the prediction, in its folder
    imported.offsets.show({"tumor": 1.0})
    assert _folderOf(imported.offsets.apply()) == imported.folder
    # importing the same run again reuses its folder
    again = logic.importInferenceResults(task, reference, name="again", overlays=False)
    assert again.folder == imported.folder and _folderOf(again.segmentation) == imported.folder

    # visibility: only the last prediction shows; hiding it, removing it, or Restore gives the others back
    display = lambda node: node.GetDisplayNode().GetVisibility()  # noqa: E731
    assert display(again.segmentation) and not display(imported.segmentation)
    assert not display(visible) and not display(hidden)
    again.segmentation.GetDisplayNode().SetVisibility(False)
    assert display(visible) and display(imported.segmentation) and not display(hidden)
    again.segmentation.GetDisplayNode().SetVisibility(True)
    assert not display(visible) and not display(imported.segmentation) and not display(hidden)
    mrml.scene.RemoveNode(again.segmentation)
    assert display(visible) and display(imported.segmentation) and not display(hidden)
    third = logic.importInferenceResults(task, reference, name="third", overlays=False)
    assert display(third.segmentation) and not display(visible) and not display(imported.segmentation)
    logic.restoreSegmentations()
    assert display(visible) and display(imported.segmentation) and not display(hidden)
    assert visible.GetDisplayNode().GetAttribute("AsymSeg.VisibilityBeforePrediction") is None


def test_a_training_import_goes_into_the_runs_folder(mrml, tmp_path):
    run = tmp_path / "20250101-090000_asymmetric_focal"
    out = run / "out"
    out.mkdir(parents=True)
    (out / "logit_statistics_train.json").write_text(json.dumps(TRAIN))
    (out / "logit_statistics_validation.json").write_text(json.dumps(CASE))
    task = types.SimpleNamespace(state=RunState(status=RunStatus.FINISHED), outputFolder=out,
                                 context={"folder": run})
    results = AsymSegCoreLogic().importTrainingResults(task)
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml.scene)
    assert shNode.GetItemName(results.folder) == "AsymSeg 20250101-090000_asymmetric_focal"
    nodes = results.charts.nodes()
    assert nodes and all(_folderOf(n) == results.folder for n in nodes)
    assert "tumor margin, validation cases: 40% missed" in [n.GetName() for n in nodes]
    assert "20250101-090000_asymmetric_focal: tumor margin, training cases vs validation cases" in \
        [n.GetName() for n in nodes]
