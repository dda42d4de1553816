"""Engine events and exit codes as typed objects (docs/protocol.md, "Events" and "Exit codes").

Qt-free. ``parseLine`` turns one stdout line into an event; a line that is not a JSON
object with a known ``type`` becomes a ``LogLine`` (never an exception), so a stray print
from a library cannot break a run.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Optional


from .Protocol import protocol

# The protocol's event types (protocol.json), plus LOG: not a protocol event but a human-readable
# line (stderr or non-JSON stdout).
EventType = enum.Enum("EventType", {**{e["type"].upper().replace("-", "_"): e["type"] for e in protocol()["events"]},
                                    "LOG": "log"}, type=str, module=__name__)

# The engine's exit codes (protocol.json): FINISHED, INTERNAL, USAGE, INPUT, RESOURCE, DIVERGENCE, CANCELLED.
ExitCode = enum.IntEnum("ExitCode", {e["name"].upper(): e["code"] for e in protocol()["exit_codes"]},
                        module=__name__)

# exit code -> (message, hint) shown by the panel
EXIT_MESSAGES = {ExitCode(e["code"]): (e["message"], e["hint"]) for e in protocol()["exit_codes"]}


def exitMessage(code: Optional[int]) -> tuple[str, str]:
    """(message, hint) for a process exit code, including signals and unknown codes."""
    if code is None:
        return "The engine is still running.", ""
    try:
        return EXIT_MESSAGES[ExitCode(code)]
    except ValueError:
        pass
    if code < 0:
        return (f"The engine was stopped by signal {-code}.",
                "It may have run out of memory; try a smaller patch or batch size.")
    return f"The engine stopped with the unexpected exit code {code}.", "See the log for details."


@dataclass
class Event:
    type: EventType
    time: float = 0.0
    raw: dict = field(default_factory=dict, repr=False)


@dataclass
class LogLine(Event):
    text: str = ""
    stream: str = "stdout"


@dataclass
class StartEvent(Event):
    command: str = ""
    config: dict = field(default_factory=dict, repr=False)
    device: str = ""
    versions: dict = field(default_factory=dict)
    output: str = ""


@dataclass
class ProgressEvent(Event):
    phase: str = ""
    iteration: int = 0
    total: int = 0
    loss: Optional[float] = None
    terms: dict = field(default_factory=dict)
    lr: Optional[float] = None
    iterationsPerSecond: Optional[float] = None
    etaSeconds: Optional[float] = None
    case: Optional[str] = None

    @property
    def fraction(self) -> float:
        return min(max(self.iteration / self.total, 0.0), 1.0) if self.total else 0.0


@dataclass
class PlanEvent(Event):
    plan: dict = field(default_factory=dict, repr=False)  # the training plan (read by Plans.TrainingPlan)


@dataclass
class ValidationEvent(Event):
    iteration: int = 0
    metrics: dict = field(default_factory=dict)   # class -> {dsc, sensitivity, precision}
    meanDsc: Optional[float] = None
    best: bool = False


@dataclass
class WarningEvent(Event):
    message: str = ""
    hint: str = ""


@dataclass
class CheckpointEvent(Event):
    kind: str = ""
    path: str = ""
    iteration: int = 0


@dataclass
class ErrorEvent(Event):
    kind: str = ""
    message: str = ""
    hint: str = ""


@dataclass
class DoneEvent(Event):
    status: str = ""           # finished, cancelled, failed
    exitCode: Optional[int] = None
    model: Optional[str] = None
    outputs: dict = field(default_factory=dict)


def optionalNumber(value) -> Optional[float]:
    """A JSON number as a float; None for null, booleans and anything else."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _int(value, default: int = 0) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def eventFromDict(d: dict) -> Event:
    """Build the typed event of a protocol dictionary; unknown types become log lines."""
    kind, stamp = d.get("type"), optionalNumber(d.get("time")) or 0.0
    try:
        eventType = EventType(kind)
    except ValueError:
        return LogLine(EventType.LOG, stamp, d, text=json.dumps(d))
    common = dict(type=eventType, time=stamp, raw=d)
    if eventType is EventType.START:
        return StartEvent(**common, command=str(d.get("command", "")), config=d.get("config") or {},
                          device=str(d.get("device", "")), versions=d.get("versions") or {},
                          output=str(d.get("output", "")))
    if eventType is EventType.PROGRESS:
        return ProgressEvent(**common, phase=str(d.get("phase", "")), iteration=_int(d.get("iteration")),
                             total=_int(d.get("total")), loss=optionalNumber(d.get("loss")),
                             terms=d.get("terms") or {}, lr=optionalNumber(d.get("lr")),
                             iterationsPerSecond=optionalNumber(d.get("iterations_per_second")),
                             etaSeconds=optionalNumber(d.get("eta_seconds")),
                             case=None if d.get("case") is None else str(d.get("case")))
    if eventType is EventType.PLAN:
        return PlanEvent(**common, plan=d.get("plan") if isinstance(d.get("plan"), dict) else {})
    if eventType is EventType.VALIDATION:
        return ValidationEvent(**common, iteration=_int(d.get("iteration")), metrics=d.get("metrics") or {},
                               meanDsc=optionalNumber(d.get("mean_dsc")), best=bool(d.get("best")))
    if eventType is EventType.WARNING:
        return WarningEvent(**common, message=str(d.get("message", "")), hint=str(d.get("hint") or ""))
    if eventType is EventType.CHECKPOINT:
        return CheckpointEvent(**common, kind=str(d.get("kind", "")), path=str(d.get("path", "")),
                               iteration=_int(d.get("iteration")))
    if eventType is EventType.ERROR:
        return ErrorEvent(**common, kind=str(d.get("kind", "")), message=str(d.get("message", "")),
                          hint=str(d.get("hint") or ""))
    if eventType is EventType.DONE:
        code = d.get("exit_code")
        return DoneEvent(**common, status=str(d.get("status", "")),
                         exitCode=code if isinstance(code, int) and not isinstance(code, bool) else None,
                         model=d.get("model") if isinstance(d.get("model"), str) else None,
                         outputs={str(k): str(v) for k, v in (d.get("outputs") or {}).items() if v})
    return LogLine(EventType.LOG, stamp, d, text=json.dumps(d))


def parseLine(line: str, stream: str = "stdout") -> Event:
    text = line.rstrip("\r\n")
    if stream == "stdout" and text.startswith("{"):
        try:
            d = json.loads(text)
        except ValueError:
            d = None
        if isinstance(d, dict) and "type" in d:
            return eventFromDict(d)
    return LogLine(EventType.LOG, 0.0, {}, text=text, stream=stream)
