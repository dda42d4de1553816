"""Section 4, Run (Qt): start, resume and cancel a training; progress, ETA, status, metrics and log.

The training is prepared from the other sections by the panel; this section starts it,
shows its state and keeps what Resume needs (the prepared run and the last training task).
"""

from __future__ import annotations

from typing import Optional

from .Logic import PreparedTraining, TrainingLogicProtocol
from .QtUtils import ERROR_COLOR, OK_COLOR, Dialogs, richText
from .Runs import EngineTask, RunState, RunStatus, formatDuration
from .TaskPoller import TaskPoller


class RunSection:
    def __init__(self, ui, logic: TrainingLogicProtocol, poller: TaskPoller, dialogs: Dialogs):
        self.ui = ui
        self.logic = logic
        self.poller = poller
        self.dialogs = dialogs
        self.lastPrepared: Optional[PreparedTraining] = None
        self.lastTrainingTask: Optional[EngineTask] = None
        ui.cancelButton.clicked.connect(poller.cancel)

    def updateButtons(self, ready: bool, running: bool) -> None:
        """``ready``: the training data can be trained on; ``running``: an engine task runs."""
        self.ui.startButton.enabled = ready and not running
        self.ui.resumeButton.enabled = (not running and self.lastTrainingTask is not None
                                        and self.lastTrainingTask.state.status is RunStatus.CANCELLED)
        self.ui.cancelButton.enabled = running

    def showStatus(self, text: str) -> None:
        self.ui.statusLabel.text = text

    def appendLog(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)

    def startTraining(self, prepared: PreparedTraining, resume: bool) -> EngineTask:
        """Start the engine on ``prepared`` (a new run, or the last one resumed from its checkpoint)."""
        self.lastPrepared = prepared
        self.ui.logTextEdit.clear()
        self.appendLog(f"Run folder: {prepared.folder}")
        if not resume and prepared.export is not None:
            for issue in prepared.export.issues:  # warnings that did not block the export
                self.appendLog(f"WARNING: {issue}")
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

    def trainingFinished(self, task: EngineTask) -> None:
        """The state line already says how it ended; a failure also gets a dialog."""
        self.dialogs.showFailure(task.state, "AsymSeg training failed")

    def lastModel(self) -> Optional[str]:
        """The model of the training run in this session, if it produced one."""
        return self.lastTrainingTask.state.model if self.lastTrainingTask is not None else None
