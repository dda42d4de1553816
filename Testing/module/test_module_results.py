"""Importers: prediction -> segmentation, metrics -> table, logit statistics -> tables/series/charts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import slicer

from asymseg_module_testing import addVolume, blobCase, ijkToRas

from AsymSegLib.LogitPlots import LogitHistograms, buildLogitCharts, logitShift, preferredChart, showChart
from AsymSegLib.ResultImport import importMetrics, importPrediction, metricRows
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
    assert slicer.util.arrayFromTableColumn(table, "Dice (%)")[0] == pytest.approx(80.0)
    assert slicer.util.arrayFromTableColumn(table, "HD95 (mm)")[0] == pytest.approx(2.5)
    assert np.isnan(slicer.util.arrayFromTableColumn(table, "Dice (%)")[1])
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
    assert columns == ["Post-processing", "Class", "Dice (%)", "Sensitivity (%)", "Precision (%)", "Specificity (%)",
                       "HD95 (mm)", "Lesions in reference", "Lesions found", "Lesions missed",
                       "False-positive lesions", "Lesions found (%)", "Reference voxels", "Predicted voxels"]
    column = lambda name: slicer.util.arrayFromTableColumn(table, name).tolist()  # noqa: E731
    assert column("Lesions found") == [4, 4, 1] and column("Lesions missed") == [1, 1, 4]
    assert column("False-positive lesions") == [3, 1, 0] and column("Lesions found (%)") == pytest.approx([80, 80, 20])
    assert column("Dice (%)") == pytest.approx([60, 70, 50]) and column("HD95 (mm)") == [3.25] * 3
    assert column("Specificity (%)") == pytest.approx([99.9] * 3) and column("Reference voxels") == [40] * 3
    assert [table.GetCellText(r, 0) for r in range(3)] == [
        "None: the network's output as it is",
        "As in the segmentation: lesions smaller than 10 mm³ removed (the model's choice on its validation cases)",
        "Largest connected component of each class only (the paper's; every other lesion is deleted)"]


def statistics(means: dict, counts: list, classes=("background", "tumor"), seed=0) -> dict:
    """A record in the engine's ``LogitStatistics.to_dict()`` format from Gaussian logits."""
    rng = np.random.default_rng(seed)
    edges = np.linspace(-20.0, 20.0, 161)
    g, c = len(classes), len(classes)
    histogram = np.zeros((g, c, 160), np.int64)
    under, over = np.zeros((g, c), np.int64), np.zeros((g, c), np.int64)
    mean, m2 = np.zeros((g, c)), np.zeros((g, c))
    low, high = [[None] * c for _ in range(g)], [[None] * c for _ in range(g)]
    for gi in range(g):
        for ci in range(c):
            if not counts[gi]:
                continue
            values = rng.normal(means[(gi, ci)], 1.0, counts[gi])
            histogram[gi, ci] = np.histogram(values, edges)[0]
            mean[gi, ci], m2[gi, ci] = values.mean(), ((values - values.mean()) ** 2).sum()
            low[gi][ci], high[gi][ci] = float(values.min()), float(values.max())
    return {"format": "asymseg-logit-statistics", "version": 1, "class_names": list(classes),
            "channel_names": list(classes), "bin_edges": edges.tolist(), "count": list(counts),
            "histogram": histogram.tolist(), "underflow": under.tolist(), "overflow": over.tolist(),
            "mean": mean.tolist(), "m2": m2.tolist(), "min": low, "max": high}


def test_logit_charts_have_train_and_unseen_series_per_class(mrml, tmp_path):
    # Rare class: on unseen voxels its own logit moves towards the boundary (the paper's signature).
    train = statistics({(0, 0): 6, (0, 1): -6, (1, 0): -7, (1, 1): 7}, [4000, 300], seed=1)
    unseen = statistics({(0, 0): 6, (0, 1): -6, (1, 0): -2, (1, 1): 2}, [4000, 200], seed=2)
    (tmp_path / "train.json").write_text(json.dumps(train))
    trainStats, unseenStats = LogitHistograms.load(tmp_path / "train.json"), LogitHistograms.fromDict(unseen)
    assert logitShift(trainStats, unseenStats, 1, 1) == pytest.approx(-5, abs=0.3)
    charts = buildLogitCharts(trainStats, unseenStats, name="run", colors={"tumor": (1, 0, 0)})
    assert set(charts.charts) == {"background", "tumor"}
    for className, chart in charts.charts.items():
        assert chart.IsA("vtkMRMLPlotChartNode") and chart.GetNumberOfPlotSeriesNodes() == 4
        sides = [chart.GetNthPlotSeriesNode(i).GetAttribute("AsymSeg.Side") for i in range(4)]
        assert sides.count("train") == 2 and sides.count("unseen") == 2
        table = charts.tables[className]
        for i in range(4):
            series = chart.GetNthPlotSeriesNode(i)
            assert series.GetTableNode() is table
            assert table.GetTable().GetColumnByName(series.GetYColumnName()) is not None
        logits = slicer.util.arrayFromTableColumn(table, "logit")
        density = slicer.util.arrayFromTableColumn(table, "tumor train")
        assert np.sum(density * np.gradient(logits)) == pytest.approx(1.0, abs=0.02)  # a density
    tumorUnseen = [s for s in charts.series["tumor"] if s.GetAttribute("AsymSeg.Side") == "unseen"
                   and s.GetAttribute("AsymSeg.Channel") == "tumor"][0]
    assert "dz=-5" in tumorUnseen.GetName() or "dz=-4" in tumorUnseen.GetName()
    summary = charts.summary
    assert summary.GetNumberOfRows() == 4
    dz = slicer.util.arrayFromTableColumn(summary, "dz")
    assert dz[3] == pytest.approx(-5, abs=0.3) and abs(dz[0]) < 0.3
    assert preferredChart(charts, {"background": 0, "tumor": 1}) is charts.charts["tumor"]
    showChart(charts.charts["tumor"])
    plotView = mrml.scene.GetFirstNodeByClass("vtkMRMLPlotViewNode")
    assert plotView is not None and plotView.GetPlotChartNodeID() == charts.charts["tumor"].GetID()


def test_logit_charts_without_unseen_cases_and_empty_class(mrml):
    train = LogitHistograms.fromDict(statistics({(0, 0): 5, (0, 1): -5}, [1000, 0]))
    charts = buildLogitCharts(train, None)
    assert list(charts.charts) == ["background"]
    assert charts.charts["background"].GetNumberOfPlotSeriesNodes() == 2
    with pytest.raises(ValueError, match="format"):
        LogitHistograms.fromDict({"format": "something else"})
