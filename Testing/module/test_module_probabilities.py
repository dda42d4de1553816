"""Class probabilities against real MRML: overlays of where the model hesitates, logit offsets applied live."""

from __future__ import annotations

import json

import numpy as np
import pytest
import slicer

from asymseg_module_testing import SHAPE, addVolume, blobCase, ijkToRas, softmax, writeProbabilityArray

from AsymSegLib.Geometry import Geometry
from AsymSegLib.Probabilities import (HEAT_COLORS, OFFSETS_ATTRIBUTE, OVERLAY_THRESHOLD, Calibration, OffsetPreview,
                                      addProbabilityOverlays, rareClasses, readProbabilities)
from AsymSegLib.ResultImport import importPrediction, readLabelArray
from AsymSegLib.SceneExport import writeLabelArray

CLASSES = ["background", "tumor", "edema"]


def tumourProbabilities() -> np.ndarray:
    """(k, j, i, 3): a tumour ball of radius 4 in an edema shell, softly: every probability is in (0, 1)."""
    grid = np.indices(SHAPE)
    distance = np.sqrt(sum((grid[a] - SHAPE[a] // 2) ** 2 for a in range(3)))
    logits = np.stack([np.zeros(SHAPE), 2.0 * (4.0 - distance), 1.5 - np.abs(distance - 6.0)], axis=-1)
    return softmax(logits)


def userCase(tmp_path):
    """A user's volume (rotated, anisotropic grid), the engine's probability file and label map for it."""
    image, _ = blobCase(5)
    reference = addVolume(image, "case7 FLAIR", ijkToRas(spacing=(0.9, 1.1, 2.0), origin=(4.0, -3.0, 8.0)))
    probabilities = tumourProbabilities()
    probabilityPath = writeProbabilityArray(probabilities, reference, tmp_path / "prediction_probabilities.nii.gz")
    predictionPath = writeLabelArray(np.argmax(probabilities, axis=-1), reference, tmp_path / "prediction.nrrd")
    return reference, probabilities, probabilityPath, predictionPath


def snapshot(scene) -> dict:
    """Every node's ID -> (name, voxels or None): to show that nothing the user had was changed."""
    nodes = {}
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        voxels = np.array(slicer.util.arrayFromVolume(node), copy=True) if node.IsA("vtkMRMLVolumeNode") else None
        nodes[node.GetID()] = (node.GetName(), voxels)
    return nodes


def assertUnchanged(scene, before: dict) -> None:
    for nodeId, (name, voxels) in before.items():
        node = scene.GetNodeByID(nodeId)
        assert node is not None and node.GetName() == name, nodeId
        if voxels is not None:
            np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), voxels)


def test_rare_classes_follow_the_models_rarity():
    assert rareClasses(CLASSES, {}) == ["tumor", "edema"]  # the job's default: every class but the first
    assert rareClasses(CLASSES, {"background": 0.0, "tumor": 1.0, "edema": 0.0}) == ["tumor"]
    assert rareClasses(CLASSES, {"background": 1.0, "tumor": 0.25}) == ["tumor", "edema"]


def test_probability_overlays_are_new_volumes_on_the_input_grid(mrml, tmp_path):
    reference, probabilities, path, _ = userCase(tmp_path)
    before = snapshot(mrml.scene)
    read = readProbabilities(path, CLASSES, reference)
    np.testing.assert_allclose(read.array, np.moveaxis(probabilities, -1, 0))
    assert read.voxelMilliliters == pytest.approx(0.9 * 1.1 * 2.0 / 1000)
    overlays = addProbabilityOverlays(read, CLASSES, ["tumor", "edema"], reference.GetName())
    assert list(overlays) == ["tumor", "edema"]
    for index, (name, node) in enumerate(overlays.items(), start=1):
        assert node.GetName() == f"case7 FLAIR {name} probability" and node.IsA("vtkMRMLScalarVolumeNode")
        assert not node.IsA("vtkMRMLLabelMapVolumeNode")
        assert Geometry.fromVolume(node).differences(Geometry.fromVolume(reference)) == []
        np.testing.assert_allclose(slicer.util.arrayFromVolume(node), probabilities[..., index])
        display = node.GetDisplayNode()
        assert display.GetColorNodeID() == HEAT_COLORS and mrml.scene.GetNodeByID(HEAT_COLORS) is not None
        assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(OVERLAY_THRESHOLD)
        assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == (0.0, 1.0)
    assertUnchanged(mrml.scene, before)
    added = {mrml.scene.GetNthNode(i).GetID() for i in range(mrml.scene.GetNumberOfNodes())} - set(before)
    assert {mrml.scene.GetNodeByID(i).GetClassName() for i in added} == {"vtkMRMLScalarVolumeNode",
                                                                          "vtkMRMLScalarVolumeDisplayNode"}
    assert len(added) == 4  # the two volumes and their display nodes; nothing temporary left


def test_probabilities_on_another_grid_or_for_other_classes_are_refused(mrml, tmp_path):
    reference, probabilities, path, _ = userCase(tmp_path)
    other = addVolume(np.zeros(SHAPE, np.float32), "other grid", ijkToRas(spacing=(1.0, 1.0, 1.0)))
    with pytest.raises(RuntimeError, match=r"prediction_probabilities\.nii\.gz are not on the grid of 'other grid'"):
        readProbabilities(path, CLASSES, other)
    with pytest.raises(RuntimeError, match=r"have 3 component\(s\); the model has 2 classes"):
        readProbabilities(path, CLASSES[:2], reference)
    with pytest.raises(RuntimeError, match="Could not read the class probabilities .*missing"):
        readProbabilities(tmp_path / "missing_probabilities.nii.gz", CLASSES, reference)


def preview(mrml, tmp_path):
    reference, probabilities, probabilityPath, predictionPath = userCase(tmp_path)
    segmentation = importPrediction(predictionPath, CLASSES, reference, name="case7 AsymSeg")
    read = readProbabilities(probabilityPath, CLASSES, reference)
    return OffsetPreview(read, CLASSES, segmentation, readLabelArray(predictionPath)), reference, probabilities


def segmentVoxels(offsets: OffsetPreview, reference, name: str) -> np.ndarray:
    segmentation = offsets.segmentation
    segmentId = segmentation.GetSegmentation().GetSegmentIdBySegmentName(name)
    return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, reference) > 0


def test_an_offset_grows_or_shrinks_its_class_live(mrml, tmp_path):
    offsets, reference, probabilities = preview(mrml, tmp_path)
    tumour = []
    for value in (-100.0, -3.0, -1.0, 0.0, 0.5, 2.0, 5.0, 100.0):
        nodes = mrml.scene.GetNumberOfNodes()
        shown = offsets.show({"tumor": value})
        assert mrml.scene.GetNumberOfNodes() == nodes  # the temporary labelmap is gone
        voxels = segmentVoxels(offsets, reference, "tumor")
        np.testing.assert_array_equal(voxels, shown == 1)
        expected = np.argmax(np.log(probabilities) + np.array([0.0, value, 0.0]), axis=-1)
        np.testing.assert_array_equal(shown, expected)  # argmax_k(log p_k + b_k), computed here independently
        np.testing.assert_array_equal(segmentVoxels(offsets, reference, "edema"), expected == 2)
        tumour.append(int(voxels.sum()))
    assert tumour[0] == 0 and tumour[-1] == np.prod(SHAPE)  # -100 empties it, +100 takes every voxel
    assert tumour == sorted(tumour) and len(set(tumour)) >= 6  # grows with the offset, step by step
    segments = offsets.segmentation.GetSegmentation()
    assert [segments.GetNthSegment(i).GetName() for i in range(segments.GetNumberOfSegments())] == ["tumor", "edema"]
    with pytest.raises(ValueError, match="No class 'necrosis'"):
        offsets.show({"necrosis": 1.0})


def test_apply_keeps_the_offsets_discard_and_reset_go_back(mrml, tmp_path):
    offsets, reference, probabilities = preview(mrml, tmp_path)
    predicted = np.argmax(probabilities, axis=-1)
    grown = offsets.show({"tumor": 2.0, "edema": 0.0})
    table = offsets.apply()
    assert offsets.segmentation.GetName() == "case7 AsymSeg (logit offsets tumor +2.00)"
    assert json.loads(offsets.segmentation.GetAttribute(OFFSETS_ATTRIBUTE)) == {"tumor": 2.0}
    assert table.GetName() == "case7 AsymSeg logit offsets" and table.GetNumberOfRows() == 2
    column = lambda name: slicer.util.arrayFromTableColumn(table, name).tolist()  # noqa: E731
    assert [table.GetCellText(r, 1) for r in range(2)] == ["none", "tumor +2.00"]
    assert column("tumor voxels") == [int((predicted == 1).sum()), int((grown == 1).sum())]
    assert column("tumor (mL)") == pytest.approx([v * 0.9 * 1.1 * 2.0 / 1000 for v in column("tumor voxels")])
    assert column("tumor voxels")[1] > column("tumor voxels")[0]
    offsets.show({"tumor": -2.0})  # moved, not applied
    offsets.discard()
    np.testing.assert_array_equal(segmentVoxels(offsets, reference, "tumor"), grown == 1)
    offsets.show({"edema": 1.0})
    assert offsets.apply() is table and table.GetNumberOfRows() == 3
    assert table.GetCellText(2, 1) == "edema +1.00"
    offsets.reset()
    assert offsets.segmentation.GetName() == "case7 AsymSeg"
    assert offsets.segmentation.GetAttribute(OFFSETS_ATTRIBUTE) is None
    np.testing.assert_array_equal(segmentVoxels(offsets, reference, "tumor"), predicted == 1)


def test_a_removed_segment_is_named(mrml, tmp_path):
    offsets, _, _ = preview(mrml, tmp_path)
    segments = offsets.segmentation.GetSegmentation()
    segments.RemoveSegment(segments.GetSegmentIdBySegmentName("edema"))
    with pytest.raises(RuntimeError, match="The segment 'edema' of 'case7 AsymSeg' was removed"):
        offsets.show({"tumor": 1.0})


def test_calibration_is_read_leniently_from_the_start_config():
    config = {"calibration": {"offsets": {"tumor": 0.75, "edema": -1, "bad": "x", "flag": True},
                              "criterion": "validation DSC"}}
    calibration = Calibration.fromConfig(config)
    assert calibration.offsets == {"tumor": 0.75, "edema": -1.0} and calibration.criterion == "validation DSC"
    for missing in ({}, {"calibration": None}, {"calibration": {"offsets": []}}, {"calibration": {"offsets": {}}},
                    None):
        assert Calibration.fromConfig(missing) is None
