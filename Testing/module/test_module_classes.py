"""Source labels -> training classes (AsymSegLib/Classes.py, ClassesSection.py), against real MRML: labels of a
label map and named segments of a segmentation line up, merge into one class (or into background), and the
exported job trains on the merged class. The BRATS test runs the real engine on three real cases."""

from __future__ import annotations

import importlib
import json
import sys
import types

import numpy as np
import pytest
import slicer
import vtk

import fakeqt
from asymseg_module_testing import MODULE_DIR, addSegmentation, addVolume, blobCase, engineAvailable, readVolumeFile

from AsymSegLib.Cases import CaseInput
from AsymSegLib.Classes import discoverClasses
from AsymSegLib.ParameterNode import fieldDefaults
from AsymSegLib.SceneExport import exportCases

CORE = "tumour core"
BRATS_NAMES = {1: "necrosis", 2: "edema", 3: "non-enhancing", 4: "enhancing"}
CORE_SOURCES = ["label_1", "label_3", "label_4", "necrosis", "non-enhancing", "enhancing"]


def threeLabels(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A blob image and a label map with values 1 (core), 2 (a shell around it) and 3 (a second blob)."""
    image, blob = blobCase(seed, radius=4)
    label = np.zeros(blob.shape, np.uint8)
    grown = np.zeros_like(blob)
    k, j, i = np.nonzero(blob)
    grown[np.clip(k - 1, 0, None), j, i] = 1
    label[grown > 0] = 2
    label[blob > 0] = 1
    label[1:3, 1:3, 1:3] = 3
    return image, label


def mixedCases():
    """A label map (Slicer's built-in colour table: label_1..3) and a segmentation with named segments."""
    imageA, labelA = threeLabels(1)
    imageB, labelB = threeLabels(2)
    volumeA, volumeB = addVolume(imageA, "patA_t1"), addVolume(imageB, "patB_t1")
    segmentation = addSegmentation(labelB, volumeB, {1: "necrosis", 2: "edema", 3: "enhancing"}, name="patB_seg")
    cases = [CaseInput([volumeA], addVolume(labelA, "patA_label", labelmap=True), "train"),
             CaseInput([volumeB], segmentation, "train")]
    return cases, labelA, labelB


def test_label_values_and_segment_names_are_separate_source_labels_with_coverage_warnings(mrml):
    cases, labelA, labelB = mixedCases()
    analysis = discoverClasses(cases)
    catalog = analysis.catalog
    assert catalog.names == ["background", "label_1", "label_2", "label_3", "necrosis", "edema", "enhancing"]
    assert catalog.classes[1].trainVoxels == int((labelA == 1).sum())
    assert catalog.classes[4].trainVoxels == int((labelB == 1).sum())
    warnings = analysis.coverageIssues
    assert len(warnings) == 6 and all(w.severity == "warning" for w in warnings)  # each class in one case of two
    text = [str(w) for w in warnings]
    assert any(t.startswith("patB_t1 (row 2): no voxel of class 'label_1'") for t in text), text
    assert any(t.startswith("patA_t1 (row 1): no voxel of class 'necrosis'") for t in text), text
    assert all("Train as" in t for t in text)


def test_merging_labels_gives_one_class_with_all_their_values_and_the_exported_labels_match(mrml, tmp_path):
    cases, labelA, labelB = mixedCases()
    analysis = discoverClasses(cases)
    catalog = analysis.catalog
    for source in ("label_1", "label_3", "necrosis", "enhancing"):
        catalog.setTrainAs(source, CORE)
    for source in ("label_2", "edema"):
        catalog.setTrainAs(source, "Background")  # any spelling of background
    values = catalog.sourceValues()
    assert values == {"background": 0, "label_1": 1, "label_2": 2, "label_3": 3, "necrosis": 4, "edema": 5,
                      "enhancing": 6}
    assert catalog.classesMap() == {"background": [0, 2, 5], CORE: [1, 3, 4, 6]}
    assert catalog.byName(CORE).sources == ["label_1", "label_3", "necrosis", "enhancing"]
    core = int(np.isin(labelA, [1, 3]).sum() + np.isin(labelB, [1, 3]).sum())
    background = labelA.size + labelB.size - core
    assert catalog.byName(CORE).trainVoxels == core
    assert catalog.ratio(CORE) == pytest.approx(background / core)
    assert catalog.rarityMap() == {"background": 0.0, CORE: 1.0}
    assert analysis.coverageIssues == []  # both training cases now hold the class

    result = exportCases(cases, ["t1"], tmp_path, analysis=analysis)
    assert result.classes == {"background": [0, 2, 5], CORE: [1, 3, 4, 6]}
    assert set(result.colors) == {"background", CORE} and not [i for i in result.issues if "no voxel" in i.message]
    exported = [slicer.util.arrayFromVolume(readVolumeFile(tmp_path / case.label)) for case in result.cases]
    np.testing.assert_array_equal(exported[0], labelA)  # a label map keeps its raw values
    np.testing.assert_array_equal(exported[1], np.choose(labelB, [0, 4, 5, 6]))  # segments -> their source values
    for array, label in zip(exported, (labelA, labelB)):  # the class map gives tumour core exactly where it is
        np.testing.assert_array_equal(np.isin(array, result.classes[CORE]), np.isin(label, [1, 3]))


def test_the_first_spelling_names_a_merged_class_and_renaming_keeps_one_label_alone(mrml):
    cases, _, _ = mixedCases()
    catalog = discoverClasses(cases).catalog
    catalog.setTrainAs("necrosis", "Core")
    catalog.setTrainAs("label_1", "core")
    assert catalog.names == ["background", "core", "label_2", "label_3", "edema", "enhancing"]
    assert catalog.classesMap()["core"] == [1, 4]
    catalog.setTrainAs("background", CORE)  # value 0 is always background
    assert catalog.classesMap()["background"] == [0]
    catalog.setTrainAs("label_1", "")  # an empty name: the label is its own class again
    assert "label_1" in catalog.names and catalog.classesMap()["Core"] == [4]
    catalog.setRarity("Core", 0.3)
    catalog.setTrainAs("label_3", "core")  # label_3 (value 3) comes first now: its spelling names the class
    assert catalog.rarityMap()["core"] == 0.3 and catalog.classesMap()["core"] == [3, 4]  # the class keeps its rarity


@pytest.fixture
def classesSection(mrml, monkeypatch):
    """A ClassesSection on fake Qt widgets from the real .ui, with a parameter object."""
    monkeypatch.setitem(sys.modules, "qt", fakeqt.qtModule())
    sys.modules.pop("AsymSegLib.ClassesSection", None)
    section = importlib.import_module("AsymSegLib.ClassesSection")
    ui = fakeqt.uiFromFile(MODULE_DIR / "Resources" / "UI" / "AsymSeg.ui")
    cases, _, _ = mixedCases()
    logic = types.SimpleNamespace(discoverClasses=discoverClasses)
    parameters = types.SimpleNamespace(**fieldDefaults())

    def make():
        built = section.ClassesSection(ui, logic, lambda: cases)
        built.setParameters(parameters)
        return built

    yield types.SimpleNamespace(make=make, ui=ui, parameters=parameters)
    sys.modules.pop("AsymSegLib.ClassesSection", None)


def trainAsCell(ui, source: str):
    table = ui.classesTable
    row = next(r for r in range(table.rowCount) if table.item(r, 0).text == source)
    return row, table.cellWidget(row, 6)


def test_typing_a_class_name_under_train_as_merges_rows_and_is_restored_from_the_scene(classesSection):
    section, ui = classesSection.make(), classesSection.ui
    analysed = []
    section.analysed.connect(analysed.append)
    section.refreshNow()
    assert ui.classesTable.rowCount == 7 and "no voxel of class" in ui.classesHintLabel.text
    for source in ("label_1", "necrosis"):
        _, cell = trainAsCell(ui, source)
        cell.text = CORE
        cell.editingFinished.emit()
    assert json.loads(classesSection.parameters.trainAsJson) == {"label_1": CORE, "necrosis": CORE}
    assert section.analysis.catalog.classesMap()[CORE] == [1, 4]
    assert len(analysed) == 3  # the refresh, then each change of the mapping (its warnings change)
    rowLabel, cellLabel = trainAsCell(ui, "label_1")
    rowNecrosis, _ = trainAsCell(ui, "necrosis")
    assert rowNecrosis == rowLabel + 1 and cellLabel.text == CORE  # a merged class's labels are listed together
    assert ui.classesTable.item(rowLabel, 2).text == ui.classesTable.item(rowNecrosis, 2).text  # the class's voxels
    assert not trainAsCell(ui, "background")[1].enabled
    section.analysis.catalog.setRarity(CORE, 0.5)
    classesSection.parameters.rarityJson = json.dumps(section.analysis.catalog.rarityMap())

    restored = classesSection.make()  # a saved scene: a new section reads the parameter node
    restored.refreshNow()
    assert restored.analysis.catalog.classesMap()[CORE] == [1, 4]
    assert restored.analysis.catalog.rarityMap()[CORE] == 0.5


AVAILABLE, REASON = engineAvailable()


@pytest.mark.skipif(not AVAILABLE, reason=REASON)
def test_a_mixed_brats_scene_trains_with_a_merged_tumour_core(mrml, brats, tmp_path):
    """Case 1: a label map with BRATS values 1-4 (built-in colours: label_1..4); case 2: a segmentation with named
    segments; case 3: a label map held out for validation. One mapping in the Classes table, then the real engine."""
    from AsymSegLib.JobSpec import TrainingSettings
    from AsymSegLib.Logic import AsymSegCoreLogic
    from AsymSegLib.Runs import RunStatus

    ids = sorted(p.name[:-len("_0000.nii.gz")] for p in (brats / "imagesTr").glob("*_0000.nii.gz"))[:3]
    cases = []
    for index, case in enumerate(ids):
        channels = [_load(brats / "imagesTr" / f"{case}_{c:04d}.nii.gz", f"{case} {name}")
                    for c, name in enumerate(("flair", "t1c"))]
        labels = np.asarray(slicer.util.arrayFromVolume(readVolumeFile(brats / "labelsTr" / f"{case}.nii.gz")),
                            np.uint8)
        if index == 1:
            annotation = addSegmentation(labels, channels[0], BRATS_NAMES, name=f"{case} segments")
        else:
            annotation = addVolume(labels, f"{case} label", _ijkToRas(channels[0]), labelmap=True)
        cases.append(CaseInput(channels, annotation, "validation" if index == 2 else "train"))
    analysis = discoverClasses(cases)
    catalog = analysis.catalog
    assert set(catalog.names) == {"background", "label_1", "label_2", "label_3", "label_4", *BRATS_NAMES.values()}
    for source in CORE_SOURCES:
        catalog.setTrainAs(source, CORE)
    for source in ("label_2", "edema"):
        catalog.setTrainAs(source, "background")
    assert catalog.names == ["background", CORE] and analysis.coverageIssues == []

    logic = AsymSegCoreLogic(python=sys.executable)
    settings = TrainingSettings(preset="asymmetric-focal", iterations=2, patchSize=(16, 16, 16), batchSize=2,
                                learningRate=1e-3, validationInterval=2, device="cpu", targetSpacing=(6.0, 6.0, 6.0),
                                network={"name": "unet", "channels": [4, 8], "strides": [2], "num_res_units": 1})
    prepared = logic.prepareTraining(cases, ["flair", "t1c"], settings, tmp_path / "run", analysis=analysis)
    assert prepared.job["classes"] == {"background": [0, 2, 6], CORE: [1, 3, 4, 5, 7, 8]}
    state = logic.startTraining(prepared).wait(timeout=600)
    assert state.status is RunStatus.FINISHED, f"{state.message} {state.hint}"
    job = json.loads((prepared.outputFolder / "job.json").read_text(encoding="utf-8"))
    assert list(job["classes"]) == ["background", CORE] and job["rarity"][CORE] == 1.0


def _ijkToRas(volume) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def _load(path, name):
    """A scalar volume of the scene read from ``path`` (slicer-core has no IO manager for loadVolume)."""
    read = readVolumeFile(path)
    return addVolume(slicer.util.arrayFromVolume(read), name, _ijkToRas(read))
