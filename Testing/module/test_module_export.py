"""Export of MRML nodes into a job folder, against real MRML (slicer-core)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import slicer
import vtk

from asymseg_module_testing import SHAPE, addSegmentation, addVolume, blobCase, ijkToRas, readVolumeFile

from AsymSegLib.Cases import CaseInput, checkCases
from AsymSegLib.Classes import discoverClasses
from AsymSegLib.Geometry import Geometry
from AsymSegLib.JobSpec import TrainingSettings, buildJob
from AsymSegLib.SceneExport import ExportError, exportCases


def snapshot(nodes):
    return {n.GetID(): (np.array(slicer.util.arrayFromVolume(n), copy=True) if n.IsA("vtkMRMLVolumeNode") else None,
                        n.GetMTime()) for n in nodes}


def makeCases(mrml):
    image0, label0 = blobCase(0)
    image1, label1 = blobCase(1)
    label0 = label0 * 5  # raw label value 5: must stay 5 in the exported file
    matrixB = ijkToRas(spacing=(0.8, 0.8, 2.0), origin=(3.0, -7.0, 11.0))
    a1, a2 = addVolume(image0, "caseA_t1"), addVolume(image0 * 2 + 1, "caseA_t2")
    labelmap = addVolume(label0.astype(np.int16), "caseA_label", labelmap=True)
    b1, b2 = addVolume(image1, "caseB_t1", matrixB), addVolume(image1 - 1, "caseB_t2", matrixB)
    segmentation = addSegmentation(label1, b1, {1: "tumor core"}, name="caseB_seg")
    cases = [CaseInput([a1, a2], labelmap, "train"), CaseInput([b1, b2], segmentation, "validation")]
    return cases, (label0, label1)


def test_export_preserves_geometry_label_values_and_class_map(mrml, tmp_path):
    cases, (label0, label1) = makeCases(mrml)
    inputs = [n for c in cases for n in (*c.images, c.annotation)]
    before, count = snapshot(inputs), mrml.scene.GetNumberOfNodes()

    result = exportCases(cases, ["t1", "t2"], tmp_path)

    assert [c.role for c in result.cases] == ["train", "validation"]
    assert list(result.classes) == ["background", "label_5", "tumor core"]
    assert result.classes == {"background": [0], "label_5": [5], "tumor core": [6]}
    assert result.rarity == {"background": 0.0, "label_5": 1.0, "tumor core": 1.0}
    for case, exported in zip(cases, result.cases):
        assert len(exported.images) == 2
        for node, relative in zip(case.images, exported.images):
            back = readVolumeFile(tmp_path / relative)
            assert not Geometry.fromVolume(node).differences(Geometry.fromVolume(back), tolerance=1e-6)
            np.testing.assert_array_equal(slicer.util.arrayFromVolume(back), slicer.util.arrayFromVolume(node))
        label = readVolumeFile(tmp_path / exported.label)
        assert not Geometry.fromVolume(case.images[0]).differences(Geometry.fromVolume(label), tolerance=1e-6)
    labels = [slicer.util.arrayFromVolume(readVolumeFile(tmp_path / c.label)) for c in result.cases]
    np.testing.assert_array_equal(labels[0], label0)
    np.testing.assert_array_equal(labels[1], label1 * 6)
    # inputs untouched, no node left behind
    assert mrml.scene.GetNumberOfNodes() == count
    after = snapshot(inputs)
    for nodeId, (array, mtime) in before.items():
        if array is not None:
            np.testing.assert_array_equal(after[nodeId][0], array)
        assert after[nodeId][1] == mtime, f"{nodeId} was modified"
    assert all(n.GetStorageNode() is None for n in inputs if n.IsA("vtkMRMLVolumeNode"))


def test_export_reads_as_the_engine_would(mrml, tmp_path):
    """SimpleITK (the engine's reader) sees the geometry Slicer has, in LPS."""
    sitk = pytest.importorskip("SimpleITK")
    cases, _ = makeCases(mrml)
    result = exportCases(cases, ["t1", "t2"], tmp_path)
    node = cases[1].images[0]
    image = sitk.ReadImage(str(tmp_path / result.cases[1].images[0]))
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    ras = slicer.util.arrayFromVTKMatrix(matrix)
    lps = np.diag([-1, -1, 1]) @ ras[:3, :3]
    np.testing.assert_allclose(image.GetSpacing(), node.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(image.GetOrigin(), np.diag([-1, -1, 1]) @ ras[:3, 3], atol=1e-9)
    np.testing.assert_allclose(np.array(image.GetDirection()).reshape(3, 3), lps / np.array(node.GetSpacing()),
                               atol=1e-9)
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / result.cases[1].label)))
    assert set(np.unique(label)) == {0, 6}


def test_segment_names_give_the_class_map_across_cases(mrml, tmp_path):
    image, label = blobCase(2)
    two = label.copy()
    two[2:5, 2:5, 2:5] = 2
    cases = []
    for index, (names, role) in enumerate([({1: "Tumor", 2: "edema"}, "train"), ({1: "edema", 2: "tumor"}, "validation")]):
        volume = addVolume(image, f"img{index}")
        cases.append(CaseInput([volume], addSegmentation(two, volume, names, name=f"seg{index}"), role))
    result = exportCases(cases, ["ct"], tmp_path)
    assert result.classes == {"background": [0], "Tumor": [1], "edema": [2]}  # merged case-insensitively
    first = slicer.util.arrayFromVolume(readVolumeFile(tmp_path / result.cases[0].label))
    second = slicer.util.arrayFromVolume(readVolumeFile(tmp_path / result.cases[1].label))
    np.testing.assert_array_equal(first, two)
    np.testing.assert_array_equal(second[two == 1], 2)  # 'edema' in the second case is class edema
    np.testing.assert_array_equal(second[two == 2], 1)
    job = json.dumps(result.classes)
    assert "Tumor" in job


def test_class_discovery_counts_ratio_and_rarity(mrml):
    image, label = blobCase(3, radius=4)
    volume = addVolume(image, "img")
    cases = [CaseInput([volume], addVolume(label, "lab", labelmap=True), "train")]
    analysis = discoverClasses(cases)
    catalog = analysis.catalog
    assert catalog.names == ["background", "label_1"]
    foreground = int(label.sum())
    assert catalog.classes[1].trainVoxels == foreground
    assert catalog.classes[0].trainVoxels == label.size - foreground
    assert catalog.ratio("label_1") == pytest.approx((label.size - foreground) / foreground)
    assert catalog.rarityMap() == {"background": 0.0, "label_1": 1.0}
    catalog.setRarity("label_1", 0.4)
    assert catalog.rarityMap()["label_1"] == 0.4 and catalog.classes[1].rare
    catalog.setRare("label_1", False)
    assert catalog.rarityMap()["label_1"] == 0.0


def test_class_names_from_user_colour_table_not_builtin(mrml):
    image, label = blobCase(4)
    volume = addVolume(image, "img")
    labelmap = addVolume(label * 3, "lab", labelmap=True)
    # Built-in 'Labels' table: value 3 is named there, but it means nothing for the user's data.
    assert discoverClasses([CaseInput([volume], labelmap)]).catalog.names == ["background", "label_3"]
    table = mrml.scene.AddNewNodeByClass("vtkMRMLColorTableNode", "myClasses")
    table.SetTypeToUser()
    table.SetNumberOfColors(4)
    table.SetColor(3, "liver lesion", 0.9, 0.1, 0.1, 1.0)
    labelmap.GetDisplayNode().SetAndObserveColorNodeID(table.GetID())
    catalog = discoverClasses([CaseInput([volume], labelmap)]).catalog
    assert catalog.names == ["background", "liver lesion"]
    assert catalog.classes[1].color == pytest.approx((0.9, 0.1, 0.1), abs=0.01)  # 8-bit colour table


def test_inline_checks(mrml, tmp_path):
    image, label = blobCase(5)
    volume = addVolume(image, "img")
    shifted = addVolume(image, "img_shifted", ijkToRas(origin=(0.0, 0.0, 40.0)))
    small = addVolume(image[:20], "img_small")
    wrongLabel = addVolume(label, "lab_other_grid", ijkToRas(spacing=(2.0, 2.0, 2.0)), labelmap=True)
    empty = addVolume(np.zeros_like(label), "lab_empty", labelmap=True)
    cases = [
        CaseInput([volume, small], wrongLabel, "train"),      # channel size differs, labelmap grid differs
        CaseInput([shifted, None], empty, "train"),           # channel missing
        CaseInput([volume, volume], None, "validation"),      # no annotation, reused volume
    ]
    issues = checkCases(cases, 2)
    text = [str(i) for i in issues]
    # rows are named after their first volume (the patient), with the row number
    assert any(t.startswith("img (row 1): ") and "channel 2 differs" in t and "size" in t for t in text)
    assert any(t.startswith("img (row 1): ") and "labelmap 'lab_other_grid' differs" in t and "spacing" in t
               for t in text)
    assert any(t.startswith("img_shifted (row 2): ") and "not chosen" in t for t in text)
    assert any(t.startswith("img (row 3): ") and "No annotation" in t for t in text)
    assert not any(t.startswith("Case ") for t in text)
    assert "'img' is also used in case 'img' (row 1)." in [i.message for i in issues if i.severity == "warning"]
    # an empty annotation is an error of checkCases itself, naming the row and the node
    assert "img_shifted (row 2): Annotation 'lab_empty' is empty: no voxel of any class (background only). " \
           "(Choose the annotation of this case, or draw it first)" in [str(i) for i in issues if i.isError]
    voxel = discoverClasses([CaseInput([volume], empty, "train")]).issues
    assert [str(i) for i in voxel if "empty" in i.message] == [
        "img (row 1): Annotation 'lab_empty' is empty: no voxel of any class (background only). "
        "(Choose the annotation of this case, or draw it first)"]
    assert any("No validation case" in i.message and not i.isError for i in checkCases([CaseInput([volume], empty)], 1))
    with pytest.raises(ExportError) as raised:
        exportCases(cases, ["a", "b"], tmp_path)
    assert "differs" in str(raised.value)
    assert not (tmp_path / "images").exists()


def test_roi_masks_are_exported_on_the_first_channels_grid(mrml, tmp_path):
    """A labelmap mask (non-zero = inside) and one segment of a segmentation become 0/1 masks in the job."""
    cases, _ = makeCases(mrml)
    a1, b1 = cases[0].images[0], cases[1].images[0]
    inside = np.zeros(SHAPE, np.int16)
    inside[4:20, 2:22, 3:18] = 7
    cases[0].mask = addVolume(inside, "caseA_roi", labelmap=True)
    regions = np.zeros(SHAPE, np.uint8)
    regions[2:10] = 1
    regions[12:22] = 2
    roi = addSegmentation(regions, b1, {1: "brain", 2: "skull"}, name="caseB_roi")  # on case B's own grid
    cases[1].mask, cases[1].maskSegment = roi, roi.GetSegmentation().GetSegmentIdBySegmentName("skull")
    assert not [i for i in checkCases(cases, 2) if i.isError]
    count = mrml.scene.GetNumberOfNodes()

    result = exportCases(cases, ["t1", "t2"], tmp_path)

    assert [c.mask for c in result.cases] == ["masks/000_caseA_t1.nrrd", "masks/001_caseB_t1.nrrd"]
    job = buildJob(result, TrainingSettings())
    assert [c["mask"] for c in job["cases"]] == [c.mask for c in result.cases]
    for case, exported in zip(cases, result.cases):
        back = readVolumeFile(tmp_path / exported.mask)
        assert not Geometry.fromVolume(case.images[0]).differences(Geometry.fromVolume(back), tolerance=1e-6)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(readVolumeFile(tmp_path / result.cases[0].mask)),
                                  (inside != 0).astype(np.uint8))
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(readVolumeFile(tmp_path / result.cases[1].mask)),
                                  (regions == 2).astype(np.uint8))  # the chosen segment only
    cases[1].maskSegment = ""  # all segments: their union
    union = exportCases(cases, ["t1", "t2"], tmp_path / "union")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(readVolumeFile(tmp_path / "union" / union.cases[1].mask)),
                                  (regions != 0).astype(np.uint8))
    assert mrml.scene.GetNumberOfNodes() == count  # no node left behind by the segment export
    assert cases[0].mask.GetStorageNode() is None and a1.GetStorageNode() is None


def test_roi_mask_problems_name_the_case_and_the_node(mrml, tmp_path):
    image, label = blobCase(6)
    volume = addVolume(image, "img")
    annotation = addVolume(label, "lab", labelmap=True)
    otherGrid = addVolume(np.ones_like(label), "roi_other_grid", ijkToRas(spacing=(2.0, 2.0, 2.0)), labelmap=True)
    segmentation = addSegmentation(label, volume, {1: "brain"}, name="roi_seg")
    cases = [CaseInput([volume], annotation, "train", mask=otherGrid),
             CaseInput([volume], annotation, "validation", mask=segmentation, maskSegment="gone"),
             CaseInput([volume], annotation, "train", mask=volume)]
    text = [str(i) for i in checkCases(cases, 1) if i.isError]
    assert any(t.startswith("img (row 1): Geometry of ROI mask labelmap 'roi_other_grid' differs from channel 1: "
                            "spacing") and "Resample the mask" in t for t in text), text
    assert "img (row 2): ROI mask segment 'gone' is not in segmentation 'roi_seg'. (Choose one of its segments again)" \
        in text
    assert any(t.startswith("img (row 3): ROI mask 'img' is neither a labelmap volume nor a segmentation") for t in text)
    with pytest.raises(ExportError, match="roi_other_grid"):
        exportCases(cases, ["ct"], tmp_path)
    assert not (tmp_path / "masks").exists()
    # an empty mask is found by the voxel checks (with the classes) and blocks the export too
    empty = addVolume(np.zeros_like(label), "roi_empty", labelmap=True)
    emptyCases = [CaseInput([volume], annotation, "train", mask=empty)]
    assert not [i for i in checkCases(emptyCases, 1) if i.isError]
    issues = [str(i) for i in discoverClasses(emptyCases).issues]
    assert issues == ["img (row 1): ROI mask 'roi_empty' is empty: no voxel is inside. (Choose the mask (or segment) "
                      "that covers the region of interest, or none)"]
    with pytest.raises(ExportError, match="roi_empty"):
        exportCases(emptyCases, ["ct"], tmp_path)
    # masks with a structural problem are not read again by the voxel checks (one message per problem)
    assert discoverClasses(cases).issues == []


def test_an_empty_annotation_is_rejected_by_checkCases(mrml, tmp_path):
    """Empty labelmaps and segmentations whose segments hold no voxel are errors naming the row and the node;
    a segmentation with a voxel passes."""
    image, label = blobCase(7)
    volume = addVolume(image, "BraTS_001_flair")
    full = addSegmentation(label, volume, {1: "tumor"}, name="tumor_seg")
    emptySegmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty_seg")
    emptySegmentation.GetSegmentation().AddEmptySegment("", "tumor")
    cases = [CaseInput([volume], full, "train"), CaseInput([volume], emptySegmentation, "validation")]
    errors = [str(i) for i in checkCases(cases, 1) if i.isError]
    assert errors == ["BraTS_001_flair (row 2): Annotation 'empty_seg' is empty: no voxel of any class (background "
                      "only). (Choose the annotation of this case, or draw it first)"]
    emptyLabelmap = addVolume(np.zeros_like(label), "empty_lab", labelmap=True)
    assert any("Annotation 'empty_lab' is empty" in str(i) for i in
               checkCases([CaseInput([volume], emptyLabelmap, "train")], 1) if i.isError)
    with pytest.raises(ExportError, match="empty_seg"):
        exportCases(cases, ["flair"], tmp_path)


def test_cases_are_named_after_the_dicom_patient(mrml):
    """A volume under a DICOM patient item of the subject hierarchy names its case by the patient; the exported
    ids stay unique and file-name safe."""
    from AsymSegLib.Cases import caseIdentifiers, patientName

    image, label = blobCase(8)
    shNode = slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(mrml.scene)
    patient = shNode.CreateSubjectItem(shNode.GetSceneItemID(), "Doe^John")
    shNode.SetItemAttribute(patient, "DICOM.PatientName", "Doe^John")
    study = shNode.CreateStudyItem(patient, "MR brain")
    volumes = [addVolume(image, f"3: FLAIR {i}") for i in range(2)]
    for volume in volumes:
        if not shNode.GetItemByDataNode(volume):
            shNode.CreateItem(study, volume)
        else:
            shNode.SetItemParent(shNode.GetItemByDataNode(volume), study)
    plain = addVolume(image, "case/3 t1")
    assert patientName(volumes[0]) == "Doe John" and patientName(plain) == ""
    cases = [CaseInput([v], addVolume(label, "lab", labelmap=True)) for v in volumes] + [CaseInput([plain], None)]
    assert [c.displayName(i) for i, c in enumerate(cases)] == ["Doe John", "Doe John", "case/3 t1"]
    assert [str(i) for i in checkCases(cases, 1) if i.isError] == [
        "case/3 t1 (row 3): No annotation chosen. (Choose a labelmap volume or a segmentation with the ground truth)"]
    ids = caseIdentifiers(cases)
    assert ids == ["000_Doe_John", "001_Doe_John", "002_case_3_t1"] and len(set(ids)) == 3
