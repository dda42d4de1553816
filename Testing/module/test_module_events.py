"""Event parsing, exit-code messages and the run state machine (no process)."""

from __future__ import annotations

import json

import pytest

from AsymSegLib.Events import (
    CheckpointEvent, DoneEvent, ErrorEvent, EventType, ExitCode, LogLine, PlanEvent, ProgressEvent, StartEvent,
    ValidationEvent, WarningEvent, exitMessage, parseLine,
)
from AsymSegLib.Plans import PlanRow, TrainingPlan
from AsymSegLib.Runs import RunState, RunStatus, applyEvent, finishState, formatDuration, withFileNames

PLAN = {"format": "asymseg-plan", "version": 1,
        "settings": {"batch_size": 8, "target_spacing": [1.5, 0.8, 0.8], "patch_size": [48, 96, 96],
                     "iterations": 700, "learning_rate": 0.001, "validation_interval": 50,
                     "network": {"name": "unet", "channels": [32, 64], "strides": [2]},
                     "normalization": {"mode": "zscore", "window": None, "statistics": "foreground"},
                     "future_field": True},
        "reasons": {"batch_size": "about 524,288 voxels per batch", "iterations": "80% of the 15-minute budget",
                    "target_spacing": "a patch sees 64 mm of context"},
        "source": {"batch_size": "plan", "target_spacing": "plan", "patch_size": "user", "iterations": "plan",
                   "network": "initial model"},
        "fingerprint": {"cases": 2}, "device": {"type": "cuda", "name": "NVIDIA H200", "cores": 16,
                                                "memory_gib": 139.8},
        "step_seconds": 1.03, "estimated_minutes": 15.0, "time_budget_minutes": 15}


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
        (line(type="plan", plan=PLAN), PlanEvent),
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
    assert parseLine(cases[5][0]).plan == PLAN
    done = parseLine(cases[-1][0])
    assert (done.status, done.exitCode, done.model, done.outputs) == ("finished", 0, "/o/m.pt", {"a": "/o/a"})
    assert parseLine(cases[6][0]).hint == "fix"


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


def test_the_plan_event_reads_as_rows_with_values_sources_and_reasons():
    state = RunState(kind="plan")
    feed(state, line(type="start", command="plan"), line(type="progress", phase="plan", iteration=0, total=2))
    assert state.statusLine() == "Planning from the cases and the device 0/2..."
    event = parseLine(line(type="plan", plan=PLAN))
    applyEvent(state, event)
    plan = state.plan
    assert plan.stepSeconds == 1.03 and plan.estimatedMinutes == 15.0 and plan.timeBudgetMinutes == 15.0
    rows = plan.rows()
    assert [r.name for r in rows] == ["target_spacing", "patch_size", "batch_size", "iterations", "learning_rate",
                                       "validation_interval", "network", "normalization", "future_field"]
    assert rows[0] == PlanRow("target_spacing", "Target spacing", "1.5 x 0.8 x 0.8 mm", "planned",
                              "a patch sees 64 mm of context")
    assert rows[1] == PlanRow("patch_size", "Patch size", "48 x 96 x 96 voxels", "set by you", "")
    assert (rows[3].value, rows[3].reason) == ("700", "80% of the 15-minute budget")
    assert rows[4].value == "0.001" and rows[5].source == ""  # the engine gave no source: none shown
    assert (rows[6].value, rows[6].source) == ("unet, channels [32, 64], strides [2]", "initial model")
    assert rows[7].value == "zscore, statistics foreground"  # null keys are left out
    assert (rows[8].label, rows[8].value) == ("Future field", "True")  # a field this module does not know yet
    assert plan.summary() == ("Plan: about 15 min of training (budget 15 min) on cuda: NVIDIA H200, 139.8 GiB, "
                              "1.03 s per iteration.")


def test_a_partial_or_malformed_plan_still_reads():
    native = TrainingPlan.fromDict({"settings": {"target_spacing": "native"}, "device": {"type": "cpu", "cores": 2,
                                                                                         "memory_gib": None}})
    assert native.rows()[0].value == "native (no resampling)"
    assert native.summary() == "Plan: training time not estimated on cpu: 2 cores."
    for junk in (None, [], {"settings": [1], "reasons": "x", "step_seconds": "1", "device": 3}):
        plan = TrainingPlan.fromDict(junk)
        assert plan.rows() == [] and plan.stepSeconds is None
        assert plan.summary() == "Plan: training time not estimated on an unknown device."
    assert isinstance(parseLine(line(type="plan", plan="not a plan")), PlanEvent)


def test_error_messages_name_the_node_and_case_of_an_exported_file():
    files = {"labels/000_patA.nrrd": "annotation 'patA seg' of patA (row 1)",
             "/runs/x/labels/000_patA.nrrd": "annotation 'patA seg' of patA (row 1)"}
    message = "/runs/x/labels/000_patA.nrrd: label values [5] are not in the class map"
    described = withFileNames(message, files)
    assert described == ("/runs/x/labels/000_patA.nrrd (annotation 'patA seg' of patA (row 1)): label values [5] are "
                         "not in the class map")
    assert withFileNames(described, files) == described  # once only
    assert withFileNames("labels/000_patA.nrrd is empty", files).startswith("labels/000_patA.nrrd (annotation")
    assert withFileNames("nothing to name", files) == "nothing to name"
