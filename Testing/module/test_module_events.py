"""Event parsing, exit-code messages and the run state machine (no process)."""

from __future__ import annotations

import json

import pytest

from AsymSegLib.Events import (
    CheckpointEvent, DoneEvent, ErrorEvent, EventType, ExitCode, LogLine, ProgressEvent, StartEvent,
    ValidationEvent, WarningEvent, exitMessage, parseLine,
)
from AsymSegLib.Runs import RunState, RunStatus, applyEvent, finishState, formatDuration


def line(**fields):
    return json.dumps({"time": 1.5, **fields})


def test_every_protocol_event_parses_to_its_type():
    cases = [
        (line(type="start", command="train", config={"classes": {"background": [0]}}, device="cpu",
              versions={"torch": "2"}, output="/o"), StartEvent),
        (line(type="progress", phase="train", iteration=3, total=10, loss=0.5, terms={"ce": 0.5}, lr=1e-3,
              iterations_per_second=2.0, eta_seconds=3.5), ProgressEvent),
        (line(type="validation", iteration=3, metrics={"tumor": {"dsc": 0.5}}, mean_dsc=0.5, best=True),
         ValidationEvent),
        (line(type="warning", message="m", hint="h"), WarningEvent),
        (line(type="checkpoint", kind="best", path="/o/model_best.pt", iteration=3), CheckpointEvent),
        (line(type="error", kind="input", message="bad", hint="fix"), ErrorEvent),
        (line(type="done", status="finished", exit_code=0, model="/o/m.pt", outputs={"a": "/o/a"}), DoneEvent),
    ]
    for text, cls in cases:
        event = parseLine(text)
        assert isinstance(event, cls), text
        assert event.time == 1.5
    progress = parseLine(cases[1][0])
    assert (progress.iteration, progress.total, progress.loss, progress.etaSeconds) == (3, 10, 0.5, 3.5)
    assert progress.fraction == pytest.approx(0.3)
    done = parseLine(cases[-1][0])
    assert (done.status, done.exitCode, done.model, done.outputs) == ("finished", 0, "/o/m.pt", {"a": "/o/a"})
    assert parseLine(cases[5][0]).hint == "fix"


@pytest.mark.parametrize("text", ["plain text", "{not json", "[1, 2]", '{"no": "type"}', ""])
def test_anything_else_is_a_log_line(text):
    event = parseLine(text + "\n")
    assert isinstance(event, LogLine) and event.type is EventType.LOG and event.text == text


def test_unknown_event_type_and_stderr_are_log_lines():
    assert isinstance(parseLine(line(type="future-event")), LogLine)
    assert parseLine(line(type="done", status="finished"), stream="stderr").stream == "stderr"


def test_null_numbers_do_not_break_parsing():
    event = parseLine(line(type="progress", phase="train", iteration=1, total=2, loss=None, eta_seconds=None))
    assert event.loss is None and event.etaSeconds is None


def test_exit_messages():
    for code in ExitCode:
        message, _ = exitMessage(int(code))
        assert message
    assert "memory" in exitMessage(4)[0] and "memory" in exitMessage(4)[1] + exitMessage(4)[0]
    assert "signal 9" in exitMessage(-9)[0]
    assert "unexpected" in exitMessage(77)[0]


def feed(state, *texts):
    for text in texts:
        applyEvent(state, parseLine(text))


def test_state_follows_a_training_run():
    state = RunState(kind="train")
    feed(state, line(type="start", command="train", device="cpu"))
    assert state.status is RunStatus.RUNNING and state.device == "cpu"
    feed(state, line(type="progress", phase="load", iteration=1, total=2, case="a"))
    assert state.fraction == 0.0 and "Loading data 1/2 (a)" in state.statusLine()
    feed(state, line(type="progress", phase="train", iteration=5, total=10, loss=0.25, eta_seconds=65))
    assert state.fraction == pytest.approx(0.45)
    assert state.statusLine() == "Training: iteration 5/10, loss 0.2500, 1 min 05 s left"
    feed(state, line(type="progress", phase="validate", iteration=1, total=3, case="v"))
    assert state.iteration == 5 and state.fraction == pytest.approx(0.45)  # validation keeps training progress
    feed(state, line(type="validation", iteration=5, metrics={"tumor": {"dsc": 0.6, "sensitivity": 0.5,
                                                                         "precision": 0.9}}, mean_dsc=0.6, best=True),
         line(type="checkpoint", kind="best", path="/o/model_best.pt", iteration=5),
         line(type="progress", phase="logit-statistics", iteration=1, total=2, case="a"))
    assert state.fraction == pytest.approx(0.95)
    assert "tumor DSC 60.0%" in state.metricsLine() and "best 60.0%" in state.metricsLine()
    feed(state, line(type="done", status="finished", exit_code=0, model="/o/model_best.pt", outputs={}))
    finishState(state, 0, cancelRequested=False, killed=False)
    assert state.status is RunStatus.FINISHED and state.fraction == 1.0 and state.model == "/o/model_best.pt"
    assert state.eventTypes == ["start", "progress", "progress", "progress", "validation", "checkpoint",
                                "progress", "done"]


def test_error_surfaces_message_and_hint():
    state = RunState()
    feed(state, line(type="error", kind="resource", message="CUDA out of memory", hint="smaller patch"),
         line(type="done", status="failed", exit_code=4))
    finishState(state, 4, cancelRequested=False, killed=False)
    assert state.status is RunStatus.FAILED
    assert state.message == "CUDA out of memory" and state.hint == "smaller patch"
    assert "CUDA out of memory" in state.statusLine() and "smaller patch" in state.statusLine()


def test_exit_code_without_events_and_cancel_by_kill():
    state = RunState()
    finishState(state, 1, cancelRequested=False, killed=False)
    assert state.status is RunStatus.FAILED and "internal" in state.message
    state = RunState()
    applyEvent(state, parseLine(line(type="checkpoint", kind="last", path="/o/model_last.pt", iteration=2)))
    finishState(state, -9, cancelRequested=True, killed=True)
    assert state.status is RunStatus.CANCELLED and "killed" in state.message
    assert state.model == "/o/model_last.pt"


def test_durations():
    assert formatDuration(5) == "5 s" and formatDuration(125) == "2 min 05 s" and formatDuration(3720) == "1 h 02 min"
