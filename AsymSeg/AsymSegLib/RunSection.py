"""Section 4, Run (Qt): plan, start, resume and cancel a training; the plan, progress, ETA, status, metrics and log.

The training (or the plan) is prepared from the other sections by the panel; this section
starts it, shows its state and keeps what Resume needs (the prepared run and the last
training task). The plan view shows the engine's training plan, setting by setting (value,
planned or set by you, why) with the estimated time and the device: after Plan, and again
from the training's own plan event once Start has been pressed (the engine plans inside
``train`` too, so Start never waits for Plan).
"""

from __future__ import annotations

from typing import Optional

from .Logic import PreparedTraining, TrainingLogicProtocol
from .Plans import TrainingPlan
from .QtUtils import ERROR_COLOR, OK_COLOR, Dialogs, richText, setTableColumns, setTableRow
from .Runs import EngineTask, RunState, RunStatus, formatDuration
from .TaskPoller import TaskPoller

PLAN_COLUMNS = ["Setting", "Value", "Source", "Why"]


class RunSection:
    def __init__(self, ui, logic: TrainingLogicProtocol, poller: TaskPoller, planPoller: TaskPoller,
                 dialogs: Dialogs):
        self.ui = ui
        self.logic = logic
        self.poller = poller
        self.planPoller = planPoller
        self.dialogs = dialogs
        self.lastPrepared: Optional[PreparedTraining] = None
        self.lastTrainingTask: Optional[EngineTask] = None
        self.planTask: Optional[EngineTask] = None   # the plan task the view follows (None: a training's plan)
        self.shownPlan: Optional[TrainingPlan] = None
        ui.planTable.verticalHeader().setVisible(False)
        setTableColumns(ui.planTable, PLAN_COLUMNS)
        ui.cancelButton.clicked.connect(self.cancel)

    def updateButtons(self, ready: bool, running: bool) -> None:
        """``ready``: the training data can be trained on; ``running``: a training or inference runs."""
        planning = self.planPoller.running
        self.ui.planButton.enabled = ready and not running and not planning
        self.ui.startButton.enabled = ready and not running
        self.ui.resumeButton.enabled = (not running and self.lastTrainingTask is not None
                                        and self.lastTrainingTask.state.status is RunStatus.CANCELLED)
        self.ui.cancelButton.enabled = running or planning

    def cancel(self) -> None:
        """Stop whatever runs: the training or inference (keeping its checkpoint) and a plan being made."""
        self.poller.cancel()
        self.planPoller.cancel()

    def showStatus(self, text: str) -> None:
        self.ui.statusLabel.text = text

    def appendLog(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)

    # ------------------------------------------------------------------ plan

    def watchPlan(self, task: EngineTask) -> None:
        """Follow a plan task in the plan view (until a training replaces it: ``startTraining``)."""
        self.planTask = task
        self._fillPlanTable(None)
        task.stateChanged.connect(lambda state: self._showPlanProgress(task, state))
        self._showPlanProgress(task, task.state)

    def _showPlanProgress(self, task: EngineTask, state: RunState) -> None:
        if task is self.planTask and not state.status.isFinal:
            self.ui.planSummaryLabel.text = richText(state.statusLine())

    def planFinished(self, task: EngineTask, plan: Optional[TrainingPlan]) -> None:
        """Show the plan of a finished plan task, or why there is none (a failure also gets a dialog)."""
        if task is not self.planTask:
            return  # a training started meanwhile and shows its own plan
        self.planTask = None
        if plan is not None:
            self.showPlan(plan)
            return
        state = task.state
        self.ui.planSummaryLabel.text = richText(f"No plan: {state.statusLine()}",
                                                 ERROR_COLOR if state.status is RunStatus.FAILED else "")
        self.dialogs.showFailure(state, "AsymSeg planning failed")

    def showPlan(self, plan: TrainingPlan) -> None:
        self.ui.planSummaryLabel.text = richText(plan.summary())
        self._fillPlanTable(plan)

    def clearPlan(self, text: str) -> None:
        """No plan shown (the cases changed, or the training is about to plan), ``text`` instead."""
        self.planTask = None
        self.ui.planSummaryLabel.text = richText(text)
        self._fillPlanTable(None)

    def _fillPlanTable(self, plan: Optional[TrainingPlan]) -> None:
        """One row per setting of ``plan`` (None: empty)."""
        table = self.ui.planTable
        table.clearContents()
        rows = plan.rows() if plan is not None else []
        self.shownPlan = plan
        table.setRowCount(len(rows))
        for index, row in enumerate(rows):
            setTableRow(table, index, [row.label, row.value, row.source, row.reason])

    # ------------------------------------------------------------------ training

    def startTraining(self, prepared: PreparedTraining, resume: bool) -> EngineTask:
        """Start the engine on ``prepared`` (a new run, or the last one resumed from its checkpoint)."""
        self.lastPrepared = prepared
        self.ui.logTextEdit.clear()
        self.appendLog(f"Run folder: {prepared.folder}")
        if not resume and prepared.export is not None:
            for issue in prepared.export.issues:  # warnings that did not block the export
                self.appendLog(f"WARNING: {issue}")
        self.clearPlan("The engine plans this training first; its plan appears here.")
        task = self.logic.startTraining(prepared, resume=resume)
        self.lastTrainingTask = task
        return task

    def showState(self, state: RunState) -> None:
        self.ui.progressBar.setValue(int(round(100 * state.fraction)))
        eta = f" - {formatDuration(state.etaSeconds)} left" if state.etaSeconds is not None and \
            not state.status.isFinal else ""
        self.ui.progressBar.setFormat(f"%p%{eta}")
        color = ERROR_COLOR if state.status is RunStatus.FAILED else (OK_COLOR if state.status is RunStatus.FINISHED
                                                                       else "")
        self.ui.statusLabel.text = richText(state.statusLine(), color)
        self.ui.metricsLabel.text = richText(state.metricsLine())
        if state.plan is not None and state.plan is not self.shownPlan:
            self.showPlan(state.plan)

    def trainingFinished(self, task: EngineTask) -> None:
        """The state line already says how it ended; a failure also gets a dialog."""
        self.dialogs.showFailure(task.state, "AsymSeg training failed")

    def lastModel(self) -> Optional[str]:
        """The model of the training run in this session, if it produced one."""
        return self.lastTrainingTask.state.model if self.lastTrainingTask is not None else None
