"""The module file under the shim, the logic with the fake engine, job building, parameters, small parts."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import tempfile
import types
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import slicer

from asymseg_module_testing import (MODULE_DIR, FakeDependencies, addSegmentation, addVolume, blobCase,
                                    engineAvailable)

from AsymSegLib.Cases import CaseInput
from AsymSegLib.CaseStore import ParameterNodeCaseStore, loadCases, saveCases
from AsymSegLib.Dependencies import DependencyStatus, SlicerDependencies, checkDependencies, ensureEngineReady
from AsymSegLib.Devices import LocalDevices, deviceChoices, parseNvidiaSmi
from AsymSegLib.JobSpec import PLANNED_FIELDS, TrainingSettings, buildJob, writeJob
from AsymSegLib.Logic import (AsymSegCoreLogic, defaultOutputFolder, inferenceRunFolder, modelInfo, timestampedFolder,
                              trainingRunFolder)
from AsymSegLib.ParameterNode import SPACING_MODES, AsymSegParameters, fieldDefaults, settingsFromParameters
from AsymSegLib.Presets import PRESETS, RECOMMENDED, techniqueSpec
from AsymSegLib.Protocol import jobDefault
from AsymSegLib.Runs import RunStatus
from AsymSegLib.SceneExport import ExportError, exportCases
from AsymSegLib.Signal import Signal

HERE = Path(__file__).resolve().parent
FAKE = HERE / "fake_engine"


def test_module_metadata_and_logic_under_the_shim(mrml):
    module = importlib.import_module("AsymSeg")
    parent = types.SimpleNamespace(path=str(MODULE_DIR / "AsymSeg.py"))
    instance = module.AsymSeg(parent)
    assert parent.title == "AsymSeg" and parent.categories == ["Segmentation"]
    assert "Z. Li, K. Kamnitsas, B. Glocker" in parent.helpText
    assert "Analyzing Overfitting under Class Imbalance" in parent.helpText and "10.1109/TMI.2020.3046692" in parent.helpText
    assert "Kamnitsas" in parent.acknowledgementText
    assert Path(instance.resourcePath("UI/AsymSeg.ui")).is_file()
    logic = module.AsymSegLogic()
    assert isinstance(logic, AsymSegCoreLogic)
    assert logic.getParameterNode().IsA("vtkMRMLScriptedModuleNode")
    python, folder = logic.enginePaths()
    assert python == sys.executable and (folder / "AsymSegTrainer").is_dir()
    assert issubclass(module.AsymSegTest, slicer.ScriptedLoadableModuleTest)


def test_job_spec_from_settings(mrml, tmp_path):
    image, label = blobCase(0)
    volume = addVolume(image, "img")
    cases = [CaseInput([volume], addVolume(label, "lab", labelmap=True), "train")]
    export = exportCases(cases, ["ct"], tmp_path)
    settings = TrainingSettings(preset="asymmetric-margin", technique={"margin": 0.5, "gamma": 9.0}, iterations=50,
                                patchSize=(16, 32, 32), batchSize=2, learningRate=1e-3, validationInterval=100,
                                targetSpacing=(2.0, 1.0, 1.0), timeBudgetMinutes=5.0, earlyStopping=True,
                                device="cuda:1")
    job = buildJob(export, settings)
    assert job["technique"] == {"preset": "asymmetric-margin", "margin": 0.5}  # gamma is not the preset's
    assert job["validation_interval"] == 50 and job["device"] == "cuda:1" and job["patch_size"] == [16, 32, 32]
    assert (job["iterations"], job["batch_size"], job["learning_rate"]) == (50, 2, 1e-3)
    assert job["target_spacing"] == [2.0, 1.0, 1.0]
    assert job["time_budget_minutes"] == 5.0 and job["early_stopping"] is True
    assert "network" not in job and "normalization" not in job  # not set in the panel: planned
    assert job["cases"] == [{"id": "000_img", "images": ["images/000_img_0000.nrrd"], "label": "labels/000_img.nrrd",
                             "role": "train"}]  # no ROI mask: no "mask" key
    assert job["classes"] == {"background": [0], "label_1": [1]} and job["rarity"]["label_1"] == 1.0
    path = writeJob(job, tmp_path / "job.json")
    assert json.loads(path.read_text()) == job
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    try:
        jobspec = pytest.importorskip("AsymSegTrainer.jobspec")  # the engine's own validation accepts it
        jobspec.load_job(path)
    finally:
        sys.path.pop(0)
    with pytest.raises(ValueError, match="multiples of 8"):
        buildJob(export, TrainingSettings(patchSize=(20, 20, 20)))  # checked against the engine's default network
    assert not TrainingSettings(patchSize=(1, 64, 64)).problems()
    assert TrainingSettings(patchSize=(12, 12, 12), network={"strides": [2, 2]}).problems() == []
    with pytest.raises(ValueError, match="Margin"):
        techniqueSpec("asymmetric-margin", {"margin": 50})


def test_auto_settings_are_left_out_of_the_job_for_the_engine_to_plan(mrml, tmp_path):
    image, label = blobCase(0)
    volume = addVolume(image, "img")
    export = exportCases([CaseInput([volume], addVolume(label, "lab", labelmap=True), "train")], ["ct"], tmp_path)
    job = buildJob(export, TrainingSettings())
    assert not set(PLANNED_FIELDS) & set(job), "an auto setting was written into the job"
    assert job["time_budget_minutes"] == jobDefault("time_budget_minutes") == 15.0
    assert job["early_stopping"] is False and job["technique"]["preset"] == RECOMMENDED
    # each set value is written alone; the others stay the engine's to plan
    for settings, key, value in [(TrainingSettings(targetSpacing="native"), "target_spacing", "native"),
                                 (TrainingSettings(batchSize=3), "batch_size", 3),
                                 (TrainingSettings(iterations=7), "iterations", 7),
                                 (TrainingSettings(learningRate=0.01), "learning_rate", 0.01),
                                 (TrainingSettings(validationInterval=20), "validation_interval", 20),
                                 (TrainingSettings(patchSize=(1, 64, 64)), "patch_size", [1, 64, 64])]:
        job = buildJob(export, settings)
        assert job[key] == value and set(PLANNED_FIELDS) & set(job) == {key}, key
    # set values are checked against the engine's ranges; the messages name the setting
    problems = TrainingSettings(iterations=0, batchSize=0, learningRate=2.0, validationInterval=0,
                                timeBudgetMinutes=0.0, targetSpacing=(1.0, 0.0, 1.0), patchSize=(0, 64, 64)).problems()
    assert problems == ["Iterations must be at least 1.", "Batch size must be at least 1.",
                        "Learning rate must be in (0, 1].", "Validation interval must be at least 1.",
                        "Time budget (minutes) must be in (0, 100000].",
                        "Patch size needs three positive sizes (z, y, x), or auto for all three.",
                        "Target spacing needs three positive spacings in mm (z, y, x)."]
    assert TrainingSettings(targetSpacing="coarse").problems() == [
        "Target spacing 'coarse' is unknown: use auto, native or three spacings."]
    with pytest.raises(ValueError, match="Learning rate"):
        buildJob(export, TrainingSettings(learningRate=0.0))


def test_parameters_map_to_settings():
    defaults = fieldDefaults()
    parameters = types.SimpleNamespace(**defaults)
    settings = settingsFromParameters(parameters, device="cpu", initialModel="")
    assert settings.preset == RECOMMENDED and settings.device == "cpu"
    # a new panel leaves every planned setting to the engine (the old learning rate default 3e-4 is gone)
    assert (settings.iterations, settings.patchSize, settings.batchSize, settings.learningRate,
            settings.validationInterval, settings.targetSpacing) == (None,) * 6
    assert (settings.timeBudgetMinutes, settings.earlyStopping) == (15.0, False)
    assert techniqueSpec(settings.preset, settings.technique) == {"preset": "asymmetric-focal", "gamma": 2.0}
    parameters.preset, parameters.mixupAlpha = "symmetric-mixup", 0.3
    assert techniqueSpec(parameters.preset, settingsFromParameters(parameters).technique)["mixup_alpha"] == 0.3
    assert set(PRESETS) >= {"vanilla", "asymmetric-combination"} and PRESETS[RECOMMENDED].recommended
    assert "(recommended)" in PRESETS[RECOMMENDED].displayLabel()
    assert isinstance(AsymSegParameters.iterations, int)
    # values the user set under Advanced; a patch size is auto only when all three sizes are
    parameters.iterations, parameters.batchSize, parameters.learningRate = 300, 2, 0.002
    parameters.validationInterval, parameters.patchZ = 30, 1
    parameters.timeBudgetMinutes, parameters.earlyStopping = 7.5, True
    settings = settingsFromParameters(parameters)
    assert (settings.iterations, settings.batchSize, settings.learningRate, settings.validationInterval) == \
        (300, 2, 0.002, 30)
    assert settings.patchSize == (1, 0, 0) and "Patch size needs three positive sizes" in settings.problems()[0]
    assert (settings.timeBudgetMinutes, settings.earlyStopping) == (7.5, True)
    expected = {"auto": None, "native": "native", "custom": (2.0, 0.5, 0.5)}
    parameters.spacingZ, parameters.spacingY, parameters.spacingX = 2.0, 0.5, 0.5
    for mode in SPACING_MODES:
        parameters.targetSpacing = mode
        assert settingsFromParameters(parameters).targetSpacing == expected[mode], mode


def test_case_table_survives_scene_save_and_load(mrml, tmp_path):
    image, label = blobCase(1)
    a, b = addVolume(image, "flair"), addVolume(image, "t1")
    annotation = addSegmentation(label, a, {1: "lesion"})
    roi = addSegmentation(np.ones_like(label), a, {1: "brain"}, name="roi")
    brainId = roi.GetSegmentation().GetNthSegmentID(0)
    node = mrml.scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "AsymSeg")
    cases = [CaseInput([a, b], annotation, "validation", mask=roi, maskSegment=brainId),
             CaseInput([b, None], None, "train")]
    store = ParameterNodeCaseStore()  # what the panel is given
    saveCases(node, cases, ["FLAIR", "T1"])
    store.save(node, cases, ["FLAIR", "T1"])  # idempotent
    restored, channels = store.load(node)
    assert channels == ["FLAIR", "T1"]
    assert [c.images for c in restored] == [[a, b], [b, None]] and restored[0].annotation is annotation
    assert [c.role for c in restored] == ["validation", "train"]
    assert (restored[0].mask, restored[0].maskSegment, restored[1].mask, restored[1].maskSegment) == \
        (roi, brainId, None, "")
    path = tmp_path / "scene.mrml"
    mrml.scene.SetURL(str(path))
    assert mrml.scene.Commit()
    other = slicer.vtkMRMLScene()
    other.SetURL(str(path))
    assert other.Import()
    loaded = other.GetFirstNodeByName("AsymSeg")
    cases2, channels2 = loadCases(loaded)
    assert channels2 == ["FLAIR", "T1"]
    assert [[n.GetName() if n else None for n in c.images] for c in cases2] == [["flair", "t1"], ["t1", None]]
    assert cases2[0].annotation.GetName() == annotation.GetName() and cases2[1].annotation is None
    assert cases2[0].mask.GetName() == "roi" and cases2[0].maskSegment == brainId and cases2[1].mask is None
    saveCases(node, [cases[1], cases[0]], ["FLAIR"])  # the mask moves with its case
    assert node.GetNodeReference("AsymSegCase0Mask") is None and node.GetParameter("AsymSegCase0MaskSegment") == ""
    saveCases(node, cases[:1], ["FLAIR"])
    assert len(loadCases(node)[0]) == 1 and node.GetNodeReference("AsymSegCase1Channel0") is None
    assert node.GetNodeReference("AsymSegCase1Mask") is None


def test_logic_flow_with_the_fake_engine(mrml, tmp_path):
    image, label = blobCase(3)
    cases = []
    for index, role in enumerate(["train", "validation"]):
        volume = addVolume(image, f"img{index}")
        cases.append(CaseInput([volume], addVolume(label, f"lab{index}", labelmap=True), role))
    logic = AsymSegCoreLogic(python=sys.executable, engineDirectory=FAKE)
    prepared = logic.prepareTraining(cases, ["ct"], TrainingSettings(iterations=4, patchSize=(16, 16, 16)),
                                     tmp_path / "run")
    assert (prepared.folder / "asymseg_module.json").is_file() and prepared.jobPath.is_file()
    states = []
    task = logic.startTraining(prepared)
    task.stateChanged.connect(lambda s: states.append(s.fraction))
    state = task.wait(timeout=60)
    assert state.status is RunStatus.FINISHED and states[-1] == 1.0 and states == sorted(states)
    results = logic.importTrainingResults(task)
    assert results.charts is None and "no logit statistics" in results.messages[0]
    # the fake engine's model sits in out/ with no job.json: the module's own file gives classes and channels
    (prepared.outputFolder / "job.json").write_text(prepared.jobPath.read_text())
    info = modelInfo(state.model)
    assert info.classNames == ["background", "label_1"] and info.channels == ["ct"]
    inference = logic.prepareInference(state.model, [cases[1].images[0]], tmp_path / "infer",
                                       groundTruth=cases[1].annotation)
    inferTask = logic.startInference(inference)
    assert inferTask.wait(timeout=60).status is RunStatus.FINISHED
    imported = logic.importInferenceResults(inferTask, cases[1].images[0], name="fake prediction")
    segment = imported.segmentation.GetSegmentation().GetNthSegment(0)
    assert segment.GetName() == "label_1"
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(imported.segmentation,
                                                      imported.segmentation.GetSegmentation().GetNthSegmentID(0),
                                                      cases[1].images[0])
    np.testing.assert_array_equal(mask > 0, image > 1.5)  # the fake thresholds the image
    assert imported.metricsTable.GetNumberOfRows() == 2
    assert imported.rareClasses == ["label_1"] and list(imported.overlays) == ["label_1"]
    assert imported.overlays["label_1"].GetName() == "img1 label_1 probability"
    np.testing.assert_array_equal(imported.offsets.labels({}), image > 1.5)
    again = logic.importInferenceResults(inferTask, cases[1].images[0], name="again", overlays=False)
    assert again.overlays == {} and again.offsets is not None
    with pytest.raises(ValueError, match="channel"):
        logic.prepareInference(state.model, [cases[1].images[0], cases[0].images[0]], tmp_path / "x")


def test_plan_runs_the_engines_plan_command_in_a_temporary_folder(mrml, tmp_path):
    image, label = blobCase(3)
    matrix = np.diag([0.8, 0.9, 2.5, 1.0])  # (i, j, k) spacing: the plan's is (z, y, x)
    cases = [CaseInput([addVolume(image, f"img{i}", matrix)], addVolume(label, f"lab{i}", matrix, labelmap=True), role)
             for i, role in enumerate(["train", "validation"])]
    logic = AsymSegCoreLogic(python=sys.executable, engineDirectory=FAKE)
    settings = TrainingSettings(batchSize=3, timeBudgetMinutes=4.0)
    prepared = logic.preparePlan(cases, ["ct"], settings)
    folder = prepared.folder
    assert folder.name.startswith("AsymSegPlan_") and (folder / "images" / "000_img0_0000.nrrd").is_file()
    assert "batch_size" in prepared.job and "iterations" not in prepared.job
    task = logic.startPlan(prepared)
    state = task.wait(timeout=60)
    assert state.status is RunStatus.FINISHED and state.kind == "plan", task.log
    assert [e.type.value for e in task.events] == ["start", "progress", "progress", "plan", "done"]
    plan = logic.finishPlan(task)
    assert not folder.exists()  # the temporary export is gone once the plan is read
    assert plan is state.plan and plan.settings["target_spacing"] == [2.5, 0.9, 0.8]  # from the exported image
    assert plan.source["batch_size"] == "user" and plan.settings["batch_size"] == 3
    assert plan.source["iterations"] == "plan" and plan.settings["iterations"] == 384  # 80% of 4 min at 0.5 s
    assert plan.estimatedMinutes == 4.0 and plan.timeBudgetMinutes == 4.0 and plan.device["type"] == "cpu"
    assert "80% of the 4-minute budget" in plan.reasons["iterations"]
    assert task.log == [plan.summary()]  # the run log has the summary; the plan view the settings
    # a plan the engine refuses: no plan, the engine's message; the folder goes all the same
    failing = logic.preparePlan(cases, ["ct"], TrainingSettings(extra={"fake": {"mode": "error"}}))
    task = logic.startPlan(failing)
    assert task.wait(timeout=60).status is RunStatus.FAILED and "mask's geometry differs" in task.state.message
    assert logic.finishPlan(task) is None and not failing.folder.exists()
    # an export that fails leaves no temporary folder behind
    before = set(Path(tempfile.gettempdir()).glob("AsymSegPlan_*"))
    with pytest.raises(ExportError, match="No annotation"):
        logic.preparePlan([CaseInput([cases[0].images[0]], None, "train")], ["ct"], settings)
    assert set(Path(tempfile.gettempdir()).glob("AsymSegPlan_*")) == before


def test_signal_device_and_dependency_helpers():
    signal, received = Signal("int"), []
    signal.connect(received.append)
    signal.connect(received.append)  # once only
    signal.connect(lambda value: 1 / 0)  # a broken listener does not stop the others
    signal.emit(3)
    assert received == [3] and len(signal) == 2
    signal.disconnect(received.append)
    signal.emit(4)
    assert received == [3]
    gpus = parseNvidiaSmi("0, NVIDIA H200, 143771\n1, NVIDIA A100-SXM4-40GB, 40960\nNo devices were found\n")
    assert [(g.index, g.name, g.memoryMiB) for g in gpus] == [(0, "NVIDIA H200", 143771),
                                                              (1, "NVIDIA A100-SXM4-40GB", 40960)]
    choices = deviceChoices(gpus)
    assert [value for _, value in choices] == ["auto", "cpu", "cuda:0", "cuda:1"]
    assert "140 GiB" in choices[2][0]
    assert [value for _, value in LocalDevices().choices()][:2] == ["auto", "cpu"]
    status = checkDependencies()
    assert not status.torchMissing and status.ok  # this test machine has the engine's packages


def test_engine_readiness_installs_only_what_the_user_agreed_to():
    asked = []

    def answer(yes):
        return lambda question: asked.append(question) or yes

    present = FakeDependencies()
    assert ensureEngineReady(present, answer(False)).ok and not asked and not present.installed
    missing = FakeDependencies(missing=["torch", "scipy>=1.10"])
    status = ensureEngineReady(missing, answer(False))
    assert not status.ok and status.describe() == "torch, scipy" and not missing.installed
    assert asked == ["Install torch, scipy?"]
    assert ensureEngineReady(missing, answer(True)).ok and missing.installed == ["torch, scipy"]
    selfAsking = FakeDependencies(missing=["scipy>=1.10"], question="")  # the installer asks by itself (pip_ensure)
    assert ensureEngineReady(selfAsking, answer(False)).ok and selfAsking.installed == ["scipy"] and len(asked) == 2
    # slicer-core has no slicer.packaging.pip_ensure: every missing package is asked for, torch first
    question = SlicerDependencies().installQuestion(DependencyStatus(True, ["monai>=1.3", "tqdm>=4.65"]))
    assert question.startswith("AsymSeg's training engine needs these Python packages: torch, monai, tqdm.\n")
    assert SlicerDependencies().installQuestion(DependencyStatus(False, [])) == ""


def test_run_folders_are_named_by_time_and_label(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    when = datetime(2024, 3, 5, 14, 7, 9)
    assert defaultOutputFolder() == tmp_path / "home" / "AsymSeg"
    assert trainingRunFolder("", "vanilla", when) == tmp_path / "home" / "AsymSeg" / "20240305-140709_vanilla"
    runs = tmp_path / "runs"
    first = trainingRunFolder(str(runs), "asymmetric-focal", when)
    assert first == runs / "20240305-140709_asymmetric-focal" and not first.exists()  # named, not created
    first.mkdir(parents=True)
    assert trainingRunFolder(str(runs), "asymmetric-focal", when) == runs / "20240305-140709_asymmetric-focal_2"
    assert inferenceRunFolder(str(runs), "c2 T1/FLAIR", when) == runs / "inference" / "20240305-140709_c2_T1_FLAIR"
    assert inferenceRunFolder("", "", when) == tmp_path / "home" / "AsymSeg" / "inference" / "20240305-140709_case"
    assert timestampedFolder(runs, "x" * 50, when) == runs / f"20240305-140709_{'x' * 40}"


def test_reload_reloads_the_library_then_the_module():
    """AsymSegWidget.onReload, in a fresh interpreter (reloading here would change the classes other tests hold)."""
    code = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
import asymseg_module_testing
import AsymSeg
import AsymSegLib.Cases, AsymSegLib.Logic, AsymSegLib.Runs, AsymSegLib.Signal
calls = []
AsymSeg.ScriptedLoadableModuleWidget.onReload = lambda self: calls.append(AsymSegLib.Logic.CaseInput)
old = AsymSegLib.Cases.CaseInput
AsymSeg.AsymSegWidget().onReload()
assert calls == [AsymSegLib.Cases.CaseInput] and AsymSegLib.Cases.CaseInput is not old, calls
order = AsymSeg.reloadLibrary()
assert set(order) == {{n for n in sys.modules if n.startswith("AsymSegLib.")}}, order
assert order.index("AsymSegLib.Cases") < order.index("AsymSegLib.Logic"), order
assert order.index("AsymSegLib.Signal") < order.index("AsymSegLib.Runs") < order.index("AsymSegLib.Logic"), order
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


AVAILABLE, REASON = engineAvailable()


@pytest.mark.skipif(not AVAILABLE, reason=REASON)
def test_the_slicer_self_test_runs_here(mrml):
    """AsymSegTest (the ScriptedLoadableModuleTest Slicer's CI runs) passes under slicer-core with the real engine."""
    module = importlib.import_module("AsymSeg")
    test = module.AsymSegTest()
    test.python = sys.executable
    test.runTest()
    assert test.results["imported"].segmentation is not None
