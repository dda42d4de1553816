"""State of one engine run (training, plan, inference or ranking), fed by its events.

Qt-free. ``RunState`` is a dataclass the Run panel displays (phase, progress, ETA, loss,
validation metrics, the training plan, status line, errors with hints); ``EngineTask`` owns an
``EngineProcess`` and its state and emits ``Signal``s as events arrive. ``poll()`` is called
from a ``qt.QTimer`` in Slicer and from a plain loop (``wait``) in tests.
"""

from __future__ import annotations

import enum
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from .EngineProcess import EngineProcess
from .Events import (
    CheckpointEvent, DoneEvent, ErrorEvent, Event, ExitCode, LogLine, PlanEvent, ProgressEvent, StartEvent,
    ValidationEvent, WarningEvent, exitMessage,
)
from .Plans import TrainingPlan
from .Signal import Signal


class RunStatus(str, enum.Enum):
    NOT_STARTED = "not started"
    RUNNING = "running"
    CANCELLING = "cancelling"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def isFinal(self) -> bool:
        return self in (RunStatus.FINISHED, RunStatus.CANCELLED, RunStatus.FAILED)


@dataclass
class RunState:
    kind: str = "train"                 # train, plan, infer or rank
    status: RunStatus = RunStatus.NOT_STARTED
    phase: str = ""
    iteration: int = 0                  # training iteration (train) / step of the phase (infer)
    total: int = 0
    phaseStep: int = 0                  # step and total of the current non-training phase
    phaseTotal: int = 0
    loss: Optional[float] = None
    terms: dict = field(default_factory=dict)
    learningRate: Optional[float] = None
    etaSeconds: Optional[float] = None
    case: Optional[str] = None
    device: str = ""
    plan: Optional[TrainingPlan] = None               # from the plan event (plan and train)
    validations: list = field(default_factory=list)   # ValidationEvent
    bestMeanDsc: Optional[float] = None
    warnings: list = field(default_factory=list)       # WarningEvent
    errors: list = field(default_factory=list)         # ErrorEvent
    checkpoints: dict = field(default_factory=dict)    # kind -> path
    model: Optional[str] = None
    outputs: dict = field(default_factory=dict)
    exitCode: Optional[int] = None
    message: str = ""
    hint: str = ""
    eventTypes: list = field(default_factory=list)     # order in which protocol events arrived
    done: Optional[DoneEvent] = None
    startEvent: Optional[StartEvent] = None

    @property
    def fraction(self) -> float:
        """Overall progress in [0, 1]; in training the iterations weigh 90%, what follows 10%."""
        if self.status is RunStatus.FINISHED:
            return 1.0
        phasePart = min(max(self.phaseStep / self.phaseTotal, 0.0), 1.0) if self.phaseTotal else 0.0
        if self.kind != "train":
            return phasePart
        trainPart = min(max(self.iteration / self.total, 0.0), 1.0) if self.total else 0.0
        if self.phase == "logit-statistics":
            return 0.9 + 0.1 * phasePart
        return 0.9 * trainPart

    def statusLine(self) -> str:
        if self.status is RunStatus.NOT_STARTED:
            return "Ready."
        if self.status.isFinal:
            text = self.message or self.status.value.capitalize()
            return text + (f" {self.hint}" if self.hint and self.status is not RunStatus.FINISHED else "")
        prefix = "Cancelling: waiting for the current iteration" if self.status is RunStatus.CANCELLING else ""
        if prefix:
            return prefix + "..."
        if self.phase == "train":
            text = f"Training: iteration {self.iteration}/{self.total}"
            if self.loss is not None:
                text += f", loss {self.loss:.4f}"
            if self.etaSeconds is not None:
                text += f", {formatDuration(self.etaSeconds)} left"
            return text
        names = {"load": "Loading data", "validate": "Validating", "logit-statistics": "Collecting logit statistics",
                 "infer": "Segmenting", "rank": "Segmenting and scoring",
                 "plan": "Planning from the cases and the device"}
        text = names.get(self.phase, "Starting the engine")
        if self.phaseTotal:
            text += f" {self.phaseStep}/{self.phaseTotal}"
        if self.case:
            text += f" ({self.case})"
        return text + "..."

    def metricsLine(self) -> str:
        if not self.validations:
            return ""
        last = self.validations[-1]
        parts = [f"validation @ {last.iteration}: mean DSC {_pct(last.meanDsc)}"]
        for name, values in (last.metrics or {}).items():
            if isinstance(values, dict):
                parts.append(f"{name} DSC {_pct(values.get('dsc'))} SEN {_pct(values.get('sensitivity'))} "
                             f"PRE {_pct(values.get('precision'))}")
        if self.bestMeanDsc is not None:
            parts.append(f"best {_pct(self.bestMeanDsc)}")
        return "; ".join(parts)


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * float(value):.1f}%"


def formatDuration(seconds: float) -> str:
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def applyEvent(state: RunState, event: Event) -> None:
    """Update ``state`` with one event (pure; the tests drive it directly)."""
    if not isinstance(event, LogLine):
        state.eventTypes.append(event.type.value)
    if isinstance(event, StartEvent):
        state.startEvent = event
        state.device = event.device
        if state.status is RunStatus.NOT_STARTED:
            state.status = RunStatus.RUNNING
    elif isinstance(event, ProgressEvent):
        state.phase, state.case = event.phase, event.case
        if event.phase == "train":
            state.iteration, state.total = event.iteration, event.total
            state.phaseStep = state.phaseTotal = 0
            state.loss = event.loss
            state.terms = dict(event.terms)
            state.learningRate = event.lr
            state.etaSeconds = event.etaSeconds
        else:
            state.phaseStep, state.phaseTotal = event.iteration, event.total
            if state.kind != "train":
                state.iteration, state.total = event.iteration, event.total
            if event.phase != "validate":
                state.etaSeconds = None
    elif isinstance(event, PlanEvent):
        state.plan = TrainingPlan.fromDict(event.plan)
    elif isinstance(event, ValidationEvent):
        state.validations.append(event)
        if event.meanDsc is not None and (state.bestMeanDsc is None or event.meanDsc > state.bestMeanDsc):
            state.bestMeanDsc = event.meanDsc
    elif isinstance(event, WarningEvent):
        state.warnings.append(event)
    elif isinstance(event, CheckpointEvent):
        state.checkpoints[event.kind] = event.path
    elif isinstance(event, ErrorEvent):
        state.errors.append(event)
        state.message, state.hint = event.message, event.hint
    elif isinstance(event, DoneEvent):
        state.done = event
        state.model = event.model
        state.outputs = dict(event.outputs)
        if event.exitCode is not None:
            state.exitCode = event.exitCode


def withFileNames(message: str, fileNames: dict) -> str:
    """``message`` with each exported file it names followed by the node and case it came from (the engine only
    knows the files; the user knows the nodes). One pass, longest paths first, so an absolute path is not also
    matched by its relative tail; a path already followed by its words is left as it is."""
    if not fileNames:
        return message
    paths = sorted(fileNames, key=len, reverse=True)
    pattern = "|".join(f"{re.escape(p)}(?! \\({re.escape(fileNames[p])}\\))" for p in paths)
    return re.sub(pattern, lambda match: f"{match.group(0)} ({fileNames[match.group(0)]})", message)


def finishState(state: RunState, returnCode: Optional[int], cancelRequested: bool, killed: bool) -> None:
    """Final status from the ``done`` event and the exit code (the exit code wins on conflict)."""
    code = returnCode if returnCode is not None else state.exitCode
    state.exitCode = code
    doneStatus = state.done.status if state.done else ""
    if code == ExitCode.FINISHED and doneStatus in ("", "finished"):
        state.status = RunStatus.FINISHED
    elif code == ExitCode.CANCELLED or doneStatus == "cancelled" or (cancelRequested and (killed or (code or 0) < 0)):
        state.status = RunStatus.CANCELLED
    else:
        state.status = RunStatus.FAILED
    message, hint = exitMessage(code)
    if state.status is RunStatus.CANCELLED:
        message, hint = exitMessage(ExitCode.CANCELLED)
        if killed:
            message = "Cancelled: the engine did not stop in time and was killed."
            hint = "The last checkpoint written before that can still be used."
    if state.status is RunStatus.FAILED and state.errors:
        last = state.errors[-1]
        state.message, state.hint = last.message, last.hint or hint
    else:
        state.message, state.hint = message, hint
    if state.model is None and state.status is not RunStatus.FAILED:
        state.model = state.checkpoints.get("best") or state.checkpoints.get("last")


def _logLines(event: Event, state: RunState) -> list[str]:
    """What an event adds to the run log: warnings and errors with their hints, the plan's summary (its
    settings are in the plan view; the engine's own log lists them too)."""
    if isinstance(event, (WarningEvent, ErrorEvent)):
        line = f"{'WARNING' if isinstance(event, WarningEvent) else 'ERROR'}: {event.message}"
        return [line + (f" (hint: {event.hint})" if event.hint else "")]
    if isinstance(event, PlanEvent):
        return [state.plan.summary()]
    return []


class EngineTask:
    """An engine process plus its ``RunState``; signals: ``eventReceived``, ``logLine``,
    ``stateChanged``, ``finished``."""

    def __init__(self, process: EngineProcess, kind: str = "train", outputFolder=None, context: dict = None):
        self.process = process
        self.state = RunState(kind=kind)
        self.outputFolder = Path(outputFolder) if outputFolder else None
        self.context = dict(context or {})   # what the importers need afterwards (classes, nodes...)
        self.events: list = []
        self.log: list = []
        self.eventReceived = Signal("Event")
        self.logLine = Signal("str")
        self.stateChanged = Signal("RunState")
        self.finished = Signal("EngineTask")
        self._finishedEmitted = False

    def start(self) -> "EngineTask":
        self.process.start()
        self.state.status = RunStatus.RUNNING
        self.stateChanged.emit(self.state)
        return self

    @property
    def running(self) -> bool:
        return self.process.started and not self._finishedEmitted

    def poll(self) -> list:
        events = self.process.poll()
        for event in events:
            if isinstance(event, LogLine):
                self.log.append(event.text)
                self.logLine.emit(event.text)
                continue
            if isinstance(event, (ErrorEvent, WarningEvent)):
                event = replace(event, message=withFileNames(event.message, self.context.get("fileNames", {})))
            self.events.append(event)
            applyEvent(self.state, event)
            for line in _logLines(event, self.state):
                self.log.append(line)
                self.logLine.emit(line)
            self.eventReceived.emit(event)
        if self.process.cancelRequested and not self.state.status.isFinal:
            self.state.status = RunStatus.CANCELLING
        if events or self.process.finished:
            if self.process.finished and not self._finishedEmitted:
                finishState(self.state, self.process.returnCode, self.process.cancelRequested, self.process.killed)
                self._finishedEmitted = True
                self.stateChanged.emit(self.state)
                self.finished.emit(self)
            else:
                self.stateChanged.emit(self.state)
        return events

    def cancel(self, timeout: float = 30.0) -> None:
        if self._finishedEmitted:
            return
        self.process.cancel(timeout)
        self.state.status = RunStatus.CANCELLING
        self.stateChanged.emit(self.state)

    def wait(self, timeout: float = 600.0, interval: float = 0.05) -> RunState:
        deadline = time.time() + timeout
        while not self._finishedEmitted:
            self.poll()
            if self._finishedEmitted:
                break
            if time.time() > deadline:
                raise TimeoutError(f"The engine did not finish within {timeout:.0f} s.")
            time.sleep(interval)
        return self.state
