"""The AsymSeg panel (Qt): a thin coordinator of its six collapsible sections.

Each section (``CasesSection``, ``ClassesSection``, ``TechniqueSection``, ``RunSection``,
``ResultsSection`` with ``RetrainSection``, ``RankSection``) owns its widgets of the .ui; the panel
binds them to the parameter node, passes what one section needs from another, and runs what spans
sections: planning, starting and fine-tuning a training, applying a model, ranking cases, the
engine tasks (one at a time: training, inference or ranking) and the buttons. A plan runs on its
own poller, so Start never waits for it: Start cancels a plan being made (the engine plans
inside ``train`` anyway, with the settings of that moment). Its collaborators are injected
as typed protocols (``TrainingLogicProtocol``, ``DependenciesProtocol``, ``DevicesProtocol``,
``CaseStoreProtocol``) so tests drive it with fakes. The Qt files (this one, the sections,
``QtUtils``, ``TaskPoller``) are imported by ``AsymSegWidget.setup`` only.
"""

from __future__ import annotations

from typing import Callable, Optional

import slicer

from .CasesSection import CasesSection
from .CaseStore import CaseStoreProtocol
from .Classes import ClassAnalysis
from .ClassesSection import ClassesSection
from .Dependencies import DependenciesProtocol, ensureEngineReady
from .Devices import DevicesProtocol
from .FineTune import SHARE_IN_WORDS
from .Logic import TrainingLogicProtocol, trainingRunFolder
from .ParameterNode import parameterNodeClass
from .QtUtils import Dialogs
from .RankSection import RankSection
from .ResultsSection import ResultsSection
from .RetrainSection import RetrainSection
from .RunSection import RunSection
from .Runs import EngineTask
from .TaskPoller import TaskPoller
from .TechniqueSection import TechniqueSection

PLAN_CANCEL_TIMEOUT = 5.0  # seconds a cancelled plan gets before it is killed (it has nothing to save)


class AsymSegPanel:
    """Connects the .ui widgets (``ui``) with the logic and the parameter node."""

    def __init__(self, ui, logic: TrainingLogicProtocol, dependencies: DependenciesProtocol,
                 devices: DevicesProtocol, caseStore: CaseStoreProtocol, interactive: bool = True):
        self.ui = ui
        self.logic = logic
        self.dependencies = dependencies
        self.dialogs = Dialogs(interactive)  # not interactive in tests: no modal dialogs
        self.parameters = None               # parameterNodeWrapper instance
        self._guiTag = None
        self.poller = TaskPoller(logic.cancelTimeout)         # training or inference
        self.planPoller = TaskPoller(PLAN_CANCEL_TIMEOUT)     # a plan, beside them
        self.cases = CasesSection(ui, logic, caseStore)
        self.classes = ClassesSection(ui, logic, self.cases.cases)
        self.technique = TechniqueSection(ui, devices)
        self.run = RunSection(ui, logic, self.poller, self.planPoller, self.dialogs)
        self.results = ResultsSection(ui, logic, self.dialogs, self.cases.channelNames)
        self.retrain = RetrainSection(ui, logic, self.cases, self.lastModel)
        self.rank = RankSection(ui, logic, self.dialogs, self.results.modelPath, self.results.modelChannels)
        self.cases.changed.connect(self._onCasesChanged)
        self.cases.channelsChanged.connect(self.results.updateApplyInputs)
        self.classes.analysed.connect(self._onClassesAnalysed)
        self.results.changed.connect(self.rank.updateChannels)
        self.results.predictionImported.connect(self.retrain.showPrediction)
        self.rank.caseChosen.connect(self.results.setApplyVolumes)
        for changed in (self.results.changed, self.retrain.changed, self.rank.changed):
            changed.connect(self.updateButtons)
        self.poller.finished.connect(self.onTaskFinished)
        self.planPoller.finished.connect(self.onPlanFinished)
        ui.checkDataButton.clicked.connect(self.classes.refreshNow)
        ui.planButton.clicked.connect(self.onPlan)
        ui.startButton.clicked.connect(lambda: self.onStart(resume=False))
        ui.resumeButton.clicked.connect(lambda: self.onStart(resume=True))
        ui.useTrainedModelButton.clicked.connect(lambda: self.results.useTrainedModel(self.lastModel()))
        ui.applyButton.clicked.connect(self.onApply)
        ui.fineTuneButton.clicked.connect(self.onFineTune)
        ui.rankButton.clicked.connect(self.onRank)
        ui.cancelRankButton.clicked.connect(self.poller.cancel)
        self.updateButtons()

    # ------------------------------------------------------------------ parameter node

    def setParameterNode(self, scriptedModuleNode) -> None:
        """Bind the GUI to ``scriptedModuleNode`` (None: unbind), restoring the saved sections."""
        if self.parameters is not None and self._guiTag is not None:
            self.parameters.disconnectGui(self._guiTag)
            self._guiTag = None
        self.parameters = parameterNodeClass()(scriptedModuleNode) if scriptedModuleNode is not None else None
        if self.parameters is not None:
            self._guiTag = self.parameters.connectGui(self.ui)
        for section in (self.technique, self.classes, self.results, self.cases):  # cases last: they check
            section.setParameters(self.parameters)

    # ------------------------------------------------------------------ between sections

    def _onCasesChanged(self) -> None:
        """A plan shown (or being made) is for other cases: it goes."""
        if self.run.shownPlan is not None or self.planPoller.running:
            self._cancelPlan()
            self.run.clearPlan("The cases changed: press Plan to plan again.")
        self.classes.schedule()
        self.updateButtons()

    def _onClassesAnalysed(self, analysis: Optional[ClassAnalysis]) -> None:
        if analysis is not None:
            self.cases.check(analysis.issues)
        self.updateButtons()

    def updateButtons(self) -> None:
        running = self.poller.running
        ready = bool(self.cases.rows) and not self.cases.hasErrors() and self.classes.analysis is not None
        self.run.updateButtons(ready, running)
        self.results.updateButtons(running)
        self.retrain.updateButtons(ready, running)
        self.rank.updateButtons(running, running and self.poller.task.state.kind == "rank")

    def lastModel(self) -> str:
        """The model of the last training: in this session, else in this scene ("" : none)."""
        return self.run.lastModel() or (self.parameters.lastModel if self.parameters is not None else "")

    def _engineReady(self) -> bool:
        """Whether the engine's packages are present, installing them if the user agrees."""
        status = ensureEngineReady(self.dependencies,
                                   lambda question: self.dialogs.confirm(question, "AsymSeg: install Python packages"))
        if not status.ok:
            self.run.showStatus(f"The engine needs: {status.describe()}. Install them to train.")
        return status.ok

    def _startTask(self, errorMessage: str, start: Callable[[], EngineTask]) -> None:
        """Run ``start`` and follow the task it starts, unless a task runs or the engine is not ready."""
        if self.poller.running:
            return
        with slicer.util.tryWithErrorDisplay(errorMessage, waitCursor=True):
            if self._engineReady():
                self._watch(start())

    def onStart(self, resume: bool = False) -> None:
        """Train on the cases (or resume the cancelled run) with the Technique section's settings."""
        self._startTask("AsymSeg could not start the training.", lambda: self._startTraining(resume))

    def _startTraining(self, resume: bool, fineTuneFrom: str = "") -> EngineTask:
        """A new training (from ``fineTuneFrom``, a model, with a shorter plan), or the last one resumed."""
        prepared = self.run.lastPrepared if resume else None
        if prepared is None:
            inputs = self._trainingInputs()
            label = inputs["settings"].preset
            if fineTuneFrom:
                inputs["settings"] = self.logic.fineTuningSettings(
                    fineTuneFrom, inputs["settings"], inputs["channelNames"], inputs["analysis"].catalog.names)
                label += "_fine-tune"
            self.run.showStatus("Exporting the cases...")
            slicer.app.processEvents()
            folder = trainingRunFolder(self.technique.outputFolder(), label)
            prepared = self.logic.prepareTraining(runFolder=folder, **inputs)
        self._cancelPlan()  # the training plans itself, with the settings of now
        return self.run.startTraining(prepared, resume=resume)

    def onFineTune(self) -> None:
        """Train from the model of the chosen prediction (else the last one) on the cases, with a shorter plan."""
        self._startTask("AsymSeg could not start the fine-tuning.", self._startFineTuning)

    def _startFineTuning(self) -> EngineTask:
        model = self.retrain.fineTuneModel()
        if not model:
            raise ValueError("No model to fine-tune: apply a model or train one first.")
        task = self._startTraining(resume=False, fineTuneFrom=model)
        job = self.run.lastPrepared.job
        text = f"Fine-tuning {model} on {len(job['cases'])} case(s) with {SHARE_IN_WORDS} of the time budget " \
               f"({job['time_budget_minutes']:g} min); progress in Run."
        self.run.appendLog(text)
        self.retrain.showStatus(text)
        return task

    def onPlan(self) -> None:
        """Plan the training with the current cases and settings and show the plan (Start does not wait for it)."""
        if not self.planPoller.running:
            self._startTask("AsymSeg could not plan the training.", self._startPlan)

    def _startPlan(self) -> EngineTask:
        inputs = self._trainingInputs()
        self.run.clearPlan("Exporting the cases for the plan...")
        slicer.app.processEvents()
        return self.logic.startPlan(self.logic.preparePlan(**inputs))

    def _cancelPlan(self) -> None:
        """Stop a plan being made; what it still logs no longer reaches the run log."""
        if self.planPoller.running:
            self.planPoller.task.logLine.disconnect(self.run.appendLog)
            self.planPoller.cancel()

    def _trainingInputs(self) -> dict:
        """The cases, channel names, settings, classes and rarity a training (or its plan) is prepared from;
        ValueError when the training data has errors."""
        if self.classes.analysis is None:
            self.classes.refreshNow()
        errors = [i for i in self.cases.issues if i.isError]
        if errors:
            raise ValueError("Fix the training data first:\n" + "\n".join(str(i) for i in errors))
        analysis = self.classes.analysis
        return dict(cases=self.cases.cases(), channelNames=self.cases.channelNames(),
                    settings=self.technique.trainingSettings(), analysis=analysis,
                    rarity=analysis.catalog.rarityMap() if analysis else None)

    def onApply(self) -> None:
        """Apply the chosen model on the device of the Technique section."""
        self._startTask("AsymSeg could not apply the model.",
                        lambda: self.results.startInference(self.technique.outputFolder(), self.technique.device()))

    def onRank(self) -> None:
        """Rank the listed cases with the chosen model on the device of the Technique section."""
        self._startTask("AsymSeg could not rank the cases.",
                        lambda: self.rank.startRanking(self.technique.outputFolder(), self.technique.device()))

    # ------------------------------------------------------------------ the engine task

    def _watch(self, task: EngineTask) -> None:
        """Follow ``task``: its log in the Run section, its state in its own section (a plan in the plan view)."""
        task.logLine.connect(self.run.appendLog)
        if task.state.kind == "plan":
            self.run.watchPlan(task)
            self.planPoller.watch(task)
        else:
            showState = {"train": self.run.showState, "rank": self.rank.showState}.get(task.state.kind,
                                                                                       self.results.showState)
            task.stateChanged.connect(showState)
            self.poller.watch(task)
            showState(task.state)
        self.updateButtons()

    def onTaskFinished(self, task: EngineTask) -> None:
        with slicer.util.tryWithErrorDisplay("AsymSeg could not import the results.", waitCursor=True):
            if task.state.kind == "train":
                self.run.trainingFinished(task)
                for message in self.results.trainingFinished(task):
                    self.run.appendLog(message)
            elif task.state.kind == "rank":
                self.rank.rankingFinished(task)
            else:
                self.results.inferenceFinished(task)
        self.updateButtons()

    def onPlanFinished(self, task: EngineTask) -> None:
        with slicer.util.tryWithErrorDisplay("AsymSeg could not read the plan.", waitCursor=True):
            self.run.planFinished(task, self.logic.finishPlan(task))
        self.updateButtons()

    # ------------------------------------------------------------------ lifetime

    def onSceneClosed(self) -> None:
        """The scene is gone: a running task can no longer import its results; stop it."""
        self.poller.cancel()
        self.planPoller.cancel()
        self.results.clear()
        self.rank.clear()
        self.cases.rebuild([])
        self.classes.clear()
        self.updateButtons()

    def cleanup(self) -> None:
        self.classes.timer.stop()
        self.poller.shutdown()
        self.planPoller.shutdown()
        if self.parameters is not None and self._guiTag is not None:
            self.parameters.disconnectGui(self._guiTag)
            self._guiTag = None
