"""AsymSeg's logic, Qt-free: export -> job -> engine process -> import (the widget's only partner).

``AsymSegCoreLogic`` is what ``AsymSegLogic`` (AsymSeg.py) extends; the widget receives it
typed by ``TrainingLogicProtocol`` so it can be driven by fakes in tests. Every method works
against ``slicer.mrmlScene``, reached lazily, so this file imports under slicer-core.

Runs go to the output folder the user chose, else ``defaultOutputFolder()``: a training in
``<output>/<date-time>_<preset>`` (``trainingRunFolder``; a fine-tuning ``_<preset>_fine-tune``), applying a
model in ``<output>/inference/<date-time>_<first input volume>`` (``inferenceRunFolder``), ranking cases
to annotate in ``<output>/ranking/<date-time>_<model's run>`` (``rankingRunFolder``, layout in
``Ranking``). Planning a training (the engine's ``plan`` command, before Start) exports the same job
into a temporary folder that is removed when the plan has been read (``preparePlan``, ``startPlan``,
``finishPlan``).

In the scene, every node a run's import makes (segmentation, metrics and offsets tables, probability
overlays, margin charts with their tables and series) goes into ONE subject-hierarchy folder named
after the run folder, "AsymSeg <run folder name>" (``SceneUtils.runFolderItem``; importing the same
run again reuses it). A new prediction hides the other segmentations in the views, remembering their
visibility; hiding or removing the prediction, or ``restoreSegmentations``, gives it back
(``SceneUtils.PredictionVisibility``). A prediction remembers its input volumes and model (``Predictions``),
so once corrected it becomes a training case (``trainingCaseFromPrediction``) and its model can be
fine-tuned on the cases (``fineTuningSettings``).

Folder layout of one training run (``runFolder``)::

    job.json               the job spec (paths relative to this folder)
    asymseg_module.json    what the module needs afterwards: class colours, channel names
    images/ labels/ masks/ the exported cases (masks: the ROI masks, when given)
    out/                   the engine's output folder (checkpoints, logit statistics, logs)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Optional, Protocol

from .Cases import CaseInput, checkCases
from .Classes import ClassAnalysis, discoverClasses
from .EngineProcess import EngineProcess, engineCommand, engineEnvironment, engineFolder, pythonExecutable
from .FineTune import compatibilityProblems, fineTuningSettings
from .JobSpec import TrainingSettings, buildJob, writeJob
from .LogitPlots import LogitChartSet, LogitStatistics, buildMarginCharts
from .Plans import TrainingPlan
from .Predictions import predictionModel, rememberInputs, trainingCase
from .Probabilities import Calibration, OffsetPreview, addProbabilityOverlays, rareClasses, readProbabilities
from .Ranking import SUBSET, PreparedRanking, Ranking, exportRankingDataset, readRanking
from .ResultImport import importMetrics, importPrediction, readLabelArray
from .Runs import EngineTask, RunStatus
from .SceneExport import exportAnnotation, exportCases, exportVolumes
from .SceneUtils import PredictionVisibility, placeInFolder, runFolderItem

MODULE_FILE = "asymseg_module.json"
STOP_FILE = "STOP"
PLAN_FOLDER_PREFIX = "AsymSegPlan_"


class EngineNotFoundError(RuntimeError):
    pass


@dataclass
class PreparedTraining:
    folder: Path
    jobPath: Path
    outputFolder: Path
    job: dict
    export: object = None


@dataclass
class PreparedInference:
    folder: Path
    modelPath: Path
    images: list
    outputPath: Path
    labelPath: Optional[Path]
    classNames: list
    colors: dict
    device: str = "auto"
    rarity: dict = field(default_factory=dict)   # class name -> rarity, from the model's job.json
    volumes: list = field(default_factory=list)  # the input volume nodes, in channel order


@dataclass
class TrainingResults:
    modelPath: Optional[str]
    charts: Optional[LogitChartSet] = None
    folder: int = 0                                   # the run's subject-hierarchy folder item (0: no nodes made)
    messages: list = field(default_factory=list)


@dataclass
class InferenceResults:
    segmentation: object
    folder: int = 0                                   # the run's subject-hierarchy folder item
    metricsTable: object = None
    charts: Optional[LogitChartSet] = None
    messages: list = field(default_factory=list)
    rareClasses: list = field(default_factory=list)   # class names with rarity > 0: overlays and offsets
    overlays: dict = field(default_factory=dict)      # rare class name -> probability volume node
    offsets: Optional[OffsetPreview] = None           # None without a probability file
    calibration: Optional[Calibration] = None         # offsets the engine fitted to the model, if it reports them
    postprocessing: dict = field(default_factory=dict)  # class name -> the engine's post-processing spec


class TrainingLogicProtocol(Protocol):
    """What the widget needs from the logic (a fake implements it in widget tests)."""

    cancelTimeout: float  # seconds a cancelled engine gets to stop before it is killed

    def checkCases(self, cases: list, channelNames: list) -> list: ...
    def discoverClasses(self, cases: list) -> ClassAnalysis: ...
    def prepareTraining(self, cases: list, channelNames: list, settings: TrainingSettings, runFolder,
                        analysis: Optional[ClassAnalysis] = None, rarity: Optional[dict] = None) -> PreparedTraining: ...
    def startTraining(self, prepared: PreparedTraining, resume: bool = False) -> EngineTask: ...
    def preparePlan(self, cases: list, channelNames: list, settings: TrainingSettings,
                    analysis: Optional[ClassAnalysis] = None, rarity: Optional[dict] = None) -> PreparedTraining: ...
    def startPlan(self, prepared: PreparedTraining) -> EngineTask: ...
    def finishPlan(self, task: EngineTask) -> Optional[TrainingPlan]: ...
    def importTrainingResults(self, task: EngineTask) -> TrainingResults: ...
    def prepareInference(self, modelPath, volumes: list, runFolder, groundTruth=None,
                         device: str = "auto") -> PreparedInference: ...
    def startInference(self, prepared: PreparedInference) -> EngineTask: ...
    def importInferenceResults(self, task: EngineTask, referenceVolume, name: str = "",
                               overlays: bool = True) -> InferenceResults: ...
    def trainingCaseFromPrediction(self, prediction) -> tuple[CaseInput, list[str]]: ...
    def fineTuningSettings(self, modelPath: str, settings: TrainingSettings, channelNames: list,
                           classNames: list) -> TrainingSettings: ...
    def prepareRanking(self, modelPath, cases: list, runFolder, device: str = "auto") -> PreparedRanking: ...
    def startRanking(self, prepared: PreparedRanking) -> EngineTask: ...
    def importRanking(self, task: EngineTask) -> Ranking: ...


def defaultOutputFolder() -> Path:
    """Where runs go when the user chose no output folder: ``~/AsymSeg``."""
    return Path.home() / "AsymSeg"


def timestampedFolder(root, label: str, when: Optional[datetime] = None) -> Path:
    """``root/<date-time>_<label>`` (label made file-name safe, 40 characters at most), not yet
    existing: ``_2``, ``_3``... is appended when it does. Nothing is created."""
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in label)[:40]
    folder = Path(root) / f"{(when or datetime.now()).strftime('%Y%m%d-%H%M%S')}_{safe}"
    suffix, candidate = 1, folder
    while candidate.exists():
        suffix += 1
        candidate = folder.with_name(f"{folder.name}_{suffix}")
    return candidate


def trainingRunFolder(outputFolder: str, preset: str, when: Optional[datetime] = None) -> Path:
    """The folder of a new training run: ``<output>/<date-time>_<preset>``."""
    return timestampedFolder(outputFolder or defaultOutputFolder(), preset, when)


def inferenceRunFolder(outputFolder: str, volumeName: str, when: Optional[datetime] = None) -> Path:
    """The folder of applying a model: ``<output>/inference/<date-time>_<volume>`` (``case`` unnamed)."""
    return timestampedFolder(Path(outputFolder or defaultOutputFolder()) / "inference", volumeName or "case", when)


def rankingRunFolder(outputFolder: str, modelPath, when: Optional[datetime] = None) -> Path:
    """The folder of ranking cases: ``<output>/ranking/<date-time>_<the model's run folder>``."""
    return timestampedFolder(Path(outputFolder or defaultOutputFolder()) / "ranking",
                             Path(modelPath).parent.parent.name or "model", when)


@dataclass
class ModelInfo:
    classNames: list = field(default_factory=list)   # index order, 0 = background
    classes: dict = field(default_factory=dict)      # name -> raw label values of the training labels
    colors: dict = field(default_factory=dict)       # name -> (r, g, b)
    channels: list = field(default_factory=list)
    rarity: dict = field(default_factory=dict)       # name -> rarity in [0, 1]


def modelInfo(modelPath) -> ModelInfo:
    """Classes, rarity, colours and channel names of a model trained by AsymSeg.

    Read from the resolved ``job.json`` the engine writes beside its checkpoints, and the
    module's own ``asymseg_module.json`` one folder up (colours). The model file itself is a
    torch file, which the module never opens.
    """
    modelPath = Path(modelPath)
    info = ModelInfo()
    job = modelPath.parent / "job.json"
    if job.is_file():
        data = json.loads(job.read_text(encoding="utf-8"))
        classes = data.get("classes") or {}
        if isinstance(classes, dict):
            info.classes = {str(k): [int(v) for v in (vs if isinstance(vs, list) else [vs])] for k, vs in classes.items()}
            info.classNames = list(info.classes)
        info.channels = list(data.get("channels") or [])
        rarity = data.get("rarity")
        info.rarity = {str(k): float(v) for k, v in rarity.items()} if isinstance(rarity, dict) else {}
    for folder in (modelPath.parent, modelPath.parent.parent):
        extra = folder / MODULE_FILE
        if extra.is_file():
            data = json.loads(extra.read_text(encoding="utf-8"))
            info.colors = {k: tuple(v) for k, v in (data.get("colors") or {}).items()}
            info.classNames = info.classNames or list(data.get("classes") or [])
            info.channels = info.channels or list(data.get("channels") or [])
            break
    return info


class AsymSegCoreLogic:
    """Export, job building, engine processes and result import. No Qt."""

    def __init__(self, python: Optional[str] = None, engineDirectory=None, cancelTimeout: float = 60.0):
        self.python = python
        self.engineDirectory = Path(engineDirectory) if engineDirectory else None
        self.cancelTimeout = cancelTimeout
        self.visibility = PredictionVisibility()  # the other segmentations hidden while a prediction is shown

    # ---------------------------------------------------------------- engine location

    def enginePaths(self) -> tuple[str, Path]:
        folder = self.engineDirectory or engineFolder()
        if folder is None:
            raise EngineNotFoundError("The AsymSegTrainer engine package was not found beside the module.",)
        return self.python or pythonExecutable(), folder

    def _task(self, arguments: list, outputFolder: Path, kind: str, context: dict, stopFile=None) -> EngineTask:
        python, folder = self.enginePaths()
        process = EngineProcess(engineCommand(python, *arguments), env=engineEnvironment(folder),
                                cwd=outputFolder.parent, stopFile=stopFile)
        return EngineTask(process, kind=kind, outputFolder=outputFolder, context=context)

    # ---------------------------------------------------------------- data

    def checkCases(self, cases: list[CaseInput], channelNames: list) -> list:
        return checkCases(cases, len(channelNames))

    def discoverClasses(self, cases: list[CaseInput]) -> ClassAnalysis:
        return discoverClasses(cases)

    # ---------------------------------------------------------------- training

    def prepareTraining(self, cases, channelNames, settings: TrainingSettings, runFolder,
                        analysis: Optional[ClassAnalysis] = None, rarity: Optional[dict] = None,
                        allowErrors: bool = False) -> PreparedTraining:
        folder = Path(runFolder)
        folder.mkdir(parents=True, exist_ok=True)
        export = exportCases(cases, channelNames, folder, analysis=analysis, rarity=rarity, allowErrors=allowErrors)
        job = buildJob(export, settings, output="out")
        jobPath = writeJob(job, folder / "job.json")
        (folder / MODULE_FILE).write_text(json.dumps({
            "format": "asymseg-module-run", "classes": list(export.classes), "channels": list(channelNames),
            "colors": {k: list(v) for k, v in export.colors.items()},
            "cases": [{"id": c.id, "role": c.role} for c in export.cases],
        }, indent=2) + "\n", encoding="utf-8")
        return PreparedTraining(folder, jobPath, folder / "out", job, export)

    def startTraining(self, prepared: PreparedTraining, resume: bool = False) -> EngineTask:
        arguments = ["train", "--job", prepared.jobPath, "--events"] + (["--resume"] if resume else [])
        context = {"classes": list(prepared.job["classes"]), "rarity": dict(prepared.job.get("rarity") or {}),
                   "colors": dict(prepared.export.colors) if prepared.export else {}, "folder": prepared.folder,
                   "fileNames": prepared.export.fileNames() if prepared.export else {}}
        task = self._task(arguments, prepared.outputFolder, "train", context, prepared.outputFolder / STOP_FILE)
        return task.start()

    # ---------------------------------------------------------------- planning

    def preparePlan(self, cases, channelNames, settings: TrainingSettings, analysis: Optional[ClassAnalysis] = None,
                    rarity: Optional[dict] = None) -> PreparedTraining:
        """The job a training with ``settings`` would run, exported into a new temporary folder."""
        folder = Path(tempfile.mkdtemp(prefix=PLAN_FOLDER_PREFIX))
        try:
            return self.prepareTraining(cases, channelNames, settings, folder, analysis=analysis, rarity=rarity)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def startPlan(self, prepared: PreparedTraining) -> EngineTask:
        """Run the engine's ``plan`` on a prepared job in the background; its ``plan`` event fills ``state.plan``."""
        arguments = ["plan", "--job", prepared.jobPath, "--events"]
        context = {"folder": prepared.folder, "fileNames": prepared.export.fileNames() if prepared.export else {}}
        return self._task(arguments, prepared.folder, "plan", context).start()

    def finishPlan(self, task: EngineTask) -> Optional[TrainingPlan]:
        """The plan of a finished plan task (None unless it finished); its temporary folder is removed."""
        shutil.rmtree(task.context["folder"], ignore_errors=True)
        return task.state.plan if task.state.status is RunStatus.FINISHED else None

    # ---------------------------------------------------------------- training results

    def importTrainingResults(self, task: EngineTask, name: str = "") -> TrainingResults:
        """Margin charts of training vs validation (unseen) cases, when the engine wrote their logit statistics,
        in the run's folder of the subject hierarchy (``name``: the charts' prefix, the run folder's name
        by default)."""
        state = task.state
        results = TrainingResults(state.model)
        if state.status is not RunStatus.FINISHED:
            return results
        out = task.outputFolder
        trainPath = Path(state.outputs.get("logit_statistics_train", out / "logit_statistics_train.json"))
        unseenPath = Path(state.outputs.get("logit_statistics_validation", out / "logit_statistics_validation.json"))
        if not trainPath.is_file():
            results.messages.append("The engine wrote no logit statistics of the training cases.")
            return results
        train = LogitStatistics.load(trainPath)
        unseen = LogitStatistics.load(unseenPath) if unseenPath.is_file() else None
        if unseen is None:
            results.messages.append("No validation cases: the margin charts show training cases only.")
        retrain = "train the model again to chart them"
        results.messages += _withoutMargins([(train, trainPath, retrain), (unseen, unseenPath, retrain)])
        if train.hasMargins and (unseen is None or unseen.hasMargins):
            runFolder = Path(task.context.get("folder") or out.parent)
            results.charts = buildMarginCharts(train, unseen, name=name or runFolder.name,
                                               colors=task.context.get("colors"),
                                               unseenLabel="validation", unseenOwner="the validation cases'")
            results.folder = runFolderItem(runFolder)
            placeInFolder(results.folder, *results.charts.nodes())
        return results

    # ---------------------------------------------------------------- inference

    def prepareInference(self, modelPath, volumes: list, runFolder, groundTruth=None,
                         device: str = "auto") -> PreparedInference:
        modelPath = Path(modelPath)
        if not modelPath.is_file():
            raise FileNotFoundError(f"Model file not found: {modelPath}")
        if not volumes or any(v is None for v in volumes):
            raise ValueError("Choose a volume for every input channel.")
        info = modelInfo(modelPath)
        names, colors, channels = info.classNames, info.colors, info.channels
        _checkChannelCount(channels, len(volumes))
        folder = Path(runFolder)
        folder.mkdir(parents=True, exist_ok=True)
        images = exportVolumes(volumes, folder / "images", "input")
        labelPath = None
        if groundTruth is not None:
            if _isSegmentationNode(groundTruth) and not info.classes:
                raise ValueError("The model's classes are unknown (no job.json beside it): the segments of the "
                                 "ground truth cannot be matched to them. Use a labelmap with the training values.")
            labelPath = folder / "labels" / "ground_truth.nrrd"
            exportAnnotation(groundTruth, volumes[0], labelPath,
                             {name: values[0] for name, values in info.classes.items()})
        return PreparedInference(folder, modelPath, images, folder / "prediction.nrrd", labelPath, names, colors,
                                 device or "auto", info.rarity, list(volumes))

    def startInference(self, prepared: PreparedInference) -> EngineTask:
        arguments = ["infer", "--model", prepared.modelPath, "--images", *prepared.images,
                     "--out", prepared.outputPath, "--events", "--device", prepared.device, "--probabilities"]
        if prepared.labelPath is not None:
            arguments += ["--label", prepared.labelPath]
        context = {"classes": list(prepared.classNames), "colors": dict(prepared.colors),
                   "prepared": prepared, "folder": prepared.folder}
        return self._task(arguments, prepared.folder, "infer", context).start()

    def importInferenceResults(self, task: EngineTask, referenceVolume, name: str = "",
                               overlays: bool = True) -> InferenceResults:
        """The prediction as a new segmentation, its metrics table, its margin charts against the training
        cases and, from its class probabilities, the logit-offset preview and (``overlays``) one probability
        volume per rare class."""
        state = task.state
        if state.status is not RunStatus.FINISHED:
            raise RuntimeError(state.message or "Inference did not finish.")
        prepared: PreparedInference = task.context["prepared"]
        config = state.startEvent.config if state.startEvent else {}
        names = list(config.get("class_names") or [])  # the model's own classes, from the engine
        if not names and isinstance(config.get("classes"), dict):
            names = list(config["classes"])
        names = names or list(task.context.get("classes") or [])
        outputs = {k: Path(v) for k, v in state.outputs.items()}
        prediction = _output(outputs, prepared.outputPath, "", ("prediction", "label", "segmentation"))
        if not names:
            names = ["background"] + [f"class_{i}" for i in range(1, 256)]
        segmentation = importPrediction(prediction, names, referenceVolume,
                                        name=name or f"{referenceVolume.GetName()} AsymSeg", colors=task.context.get("colors"))
        rememberInputs(segmentation, prepared.volumes, prepared.modelPath)
        results = InferenceResults(segmentation, folder=runFolderItem(prepared.folder),
                                   rareClasses=rareClasses(names, prepared.rarity),
                                   calibration=Calibration.fromConfig(config))
        try:
            self._importInferenceOutputs(results, prepared, state, config, names, prediction, referenceVolume, overlays,
                                        task.context.get("colors"))
        finally:  # whatever was made goes into the run's folder, and the prediction is shown alone
            placeInFolder(results.folder, segmentation, results.metricsTable, *results.overlays.values(),
                          *(results.charts.nodes() if results.charts is not None else []))
            self.visibility.follow(segmentation)
        return results

    def restoreSegmentations(self) -> None:
        """The segmentations hidden for the last prediction get their visibility back."""
        self.visibility.restore()

    # ---------------------------------------------------------------- correct and retrain

    def trainingCaseFromPrediction(self, prediction) -> tuple[CaseInput, list[str]]:
        """The training case of a corrected prediction (``Predictions.trainingCase``) and its model's channel names
        (empty when unknown)."""
        case = trainingCase(prediction)
        model = predictionModel(prediction)
        return case, (modelInfo(model).channels if model else [])

    def fineTuningSettings(self, modelPath: str, settings: TrainingSettings, channelNames: list,
                           classNames: list) -> TrainingSettings:
        """``settings`` fine-tuning ``modelPath`` with a shorter plan (``FineTune``); ValueError naming what differs
        when the model's channels or classes are not the training data's."""
        if not Path(modelPath).is_file():
            raise FileNotFoundError(f"Model file not found: {modelPath}")
        problems = compatibilityProblems(modelPath, modelInfo(modelPath), channelNames, classNames)
        if problems:
            raise ValueError(f"{modelPath} cannot be fine-tuned on these cases:\n" + "\n".join(problems))
        return fineTuningSettings(settings, modelPath)

    # ---------------------------------------------------------------- next case to annotate

    def prepareRanking(self, modelPath, cases: list, runFolder, device: str = "auto") -> PreparedRanking:
        """Export ``cases`` (CaseInput, unlabelled: their volumes only) for ``rank`` into ``runFolder``."""
        modelPath = Path(modelPath)
        if not modelPath.is_file():
            raise FileNotFoundError(f"Model file not found: {modelPath}")
        if not cases:
            raise ValueError("Add the cases to rank: one volume per channel of the model.")
        channels = modelInfo(modelPath).channels
        for index, case in enumerate(cases):
            if not case.images or any(v is None for v in case.images):
                raise ValueError(f"Case {index + 1} to rank: choose a volume for every channel.")
            _checkChannelCount(channels, len(case.images))
        folder = Path(runFolder)
        exported = exportRankingDataset(cases, channels or [f"channel{c}" for c in range(len(cases[0].images))],
                                        folder / "dataset")
        names = {caseId: case.displayName(index) for index, (caseId, case) in enumerate(exported.items())}
        return PreparedRanking(folder, modelPath, folder / "dataset", folder / "ranking.json", exported, names,
                               device or "auto")

    def startRanking(self, prepared: PreparedRanking) -> EngineTask:
        """Run the engine's ``rank`` on the exported cases in the background."""
        arguments = ["rank", "--model", prepared.modelPath, "--dataset", prepared.dataset, "--subset", SUBSET,
                     "--out", prepared.outputPath, "--device", prepared.device, "--events"]
        context = {"prepared": prepared, "folder": prepared.folder}
        return self._task(arguments, prepared.folder, "rank", context).start()

    def importRanking(self, task: EngineTask) -> Ranking:
        """The ranking of a finished rank task."""
        state = task.state
        if state.status is not RunStatus.FINISHED:
            raise RuntimeError(state.message or "Ranking did not finish.")
        return readRanking(state.outputs.get("ranking") or task.context["prepared"].outputPath)

    def _importInferenceOutputs(self, results: InferenceResults, prepared: PreparedInference, state, config: dict,
                                names: list, prediction: Path, referenceVolume, overlays: bool,
                                colors: Optional[dict]) -> None:
        """Metrics, margin charts, probabilities and overlays of a prediction into ``results``."""
        segmentation = results.segmentation
        outputs = {k: Path(v) for k, v in state.outputs.items()}
        specs = config.get("postprocessing")
        results.postprocessing = {str(k): str(v) for k, v in specs.items()} if isinstance(specs, dict) else {}
        stem = _stem(prepared.outputPath)
        metricsPath = _output(outputs, prepared.outputPath.with_name(f"{stem}_metrics.json"), "_metrics.json", ("metrics",))
        if metricsPath.is_file():
            results.metricsTable = importMetrics(metricsPath, names, name=f"{segmentation.GetName()} metrics")
        logitsPath = _output(outputs, prepared.outputPath.with_name(f"{stem}_logits.json"), "_logits.json", ("logits",))
        trainPath = prepared.modelPath.parent / "logit_statistics_train.json"
        if logitsPath.is_file() and trainPath.is_file():
            train, case = LogitStatistics.load(trainPath), LogitStatistics.load(logitsPath)
            results.messages += _withoutMargins([(train, trainPath, "train the model again to chart them"),
                                                 (case, logitsPath, "re-run inference")])
            if train.hasMargins and case.hasMargins:
                unseenLabel = "this case (by prediction)" if case.groupedBy == "prediction" else "this case"
                results.charts = buildMarginCharts(train, case, name=segmentation.GetName(),
                                                   colors=colors, unseenLabel=unseenLabel,
                                                   unseenOwner="this case's")
        elif logitsPath.is_file():
            results.messages.append("No training logit statistics beside the model: margin charts not shown.")
        probabilitiesPath = _output(outputs, prepared.outputPath.with_name(f"{stem}_probabilities.nii.gz"),
                                    "_probabilities.nii.gz", ("probabilities",))
        if not probabilitiesPath.is_file():
            results.messages.append("The engine wrote no class probabilities: no probability overlay, "
                                    "no logit offsets.")
            return
        try:
            probabilities = readProbabilities(probabilitiesPath, names, referenceVolume)
            results.offsets = OffsetPreview(probabilities, names, segmentation, readLabelArray(prediction))
        except RuntimeError as error:  # the segmentation, metrics and charts stand without them
            results.messages.append(f"{error} No probability overlay, no logit offsets.")
            return
        if overlays:
            results.overlays = addProbabilityOverlays(probabilities, names, results.rareClasses,
                                                      referenceVolume.GetName())
        return


def _checkChannelCount(channels: list, count: int) -> None:
    """ValueError when the model's channels (empty: unknown) are not ``count`` volumes."""
    if channels and len(channels) != count:
        raise ValueError(f"The model expects {len(channels)} channel(s) ({', '.join(channels)}); "
                         f"{count} volume(s) chosen.")


def _withoutMargins(files: list) -> list[str]:
    """For each (statistics or None, path, what to do) whose file predates the margins, a message saying so."""
    return [f"Margins not available for {path}; {remedy}." for stats, path, remedy in files
            if stats is not None and not stats.hasMargins]


def _isSegmentationNode(node) -> bool:
    return node is not None and node.IsA("vtkMRMLSegmentationNode")


def _stem(path: Path) -> str:
    name = path.name
    for extension in (".nii.gz", ".nii", ".nrrd", ".mha", ".nhdr", ".mhd"):
        if name.endswith(extension):
            return name[: -len(extension)]
    return path.stem


def _output(outputs: dict, default: Path, suffix: str, keys: tuple) -> Path:
    """A result path from the done event's ``outputs`` (by key or by file-name suffix), else the default."""
    for key in keys:
        if key in outputs:
            return outputs[key]
    if suffix:
        for path in outputs.values():
            if os.fspath(path).endswith(suffix):
                return path
    return default
