"""Process control with a fake engine (fake_engine/AsymSegTrainer): events, errors, cancel, tree kill."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import psutil

from AsymSegLib.EngineProcess import EngineProcess, engineCommand, engineEnvironment, engineFolder
from AsymSegLib.Events import DoneEvent, ErrorEvent, ProgressEvent
from AsymSegLib.Runs import EngineTask, RunStatus

FAKE = Path(__file__).resolve().parent / "fake_engine"


def fakeTask(tmp_path, fake: dict, iterations=5) -> EngineTask:
    job = {"format": "asymseg-job", "version": 1, "output": "out", "iterations": iterations,
           "cases": [{"id": "a", "images": [], "label": None, "role": "train"}], "classes": {}, "fake": fake}
    (tmp_path / "job.json").write_text(json.dumps(job))
    out = tmp_path / "out"
    process = EngineProcess(engineCommand(sys.executable, "train", "--job", tmp_path / "job.json", "--events"),
                            env=engineEnvironment(FAKE), cwd=tmp_path, stopFile=out / "STOP")
    return EngineTask(process, "train", out)


def waitFor(predicate, task, timeout=20.0):
    deadline = time.time() + timeout
    while not predicate():
        task.poll()
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def test_engine_folder_and_environment(tmp_path):
    root = Path(__file__).resolve().parents[2]
    assert engineFolder() == root  # source checkout: the repository root holds AsymSegTrainer/
    assert engineFolder([tmp_path, FAKE]) == FAKE
    assert engineFolder([tmp_path]) is None
    env = engineEnvironment(FAKE, {"X": "1"})
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(FAKE) and env["PYTHONUNBUFFERED"] == "1"
    assert engineCommand("py", "train", Path("j.json"))[:3] == ["py", "-m", "AsymSegTrainer"]


def test_successful_run_events_in_order(tmp_path):
    task = fakeTask(tmp_path, {"iterations": 6}).start()
    seen = []
    task.eventReceived.connect(seen.append)
    finished = []
    task.finished.connect(finished.append)
    state = task.wait(timeout=60)
    assert state.status is RunStatus.FINISHED and state.exitCode == 0
    assert finished == [task]
    types = [e.type.value for e in seen]
    assert types[0] == "start" and types[-1] == "done"
    train = [e.iteration for e in seen if isinstance(e, ProgressEvent) and e.phase == "train"]
    assert train == list(range(1, 7))
    assert types.index("checkpoint") < types.index("validation") < types.index("done")
    assert state.model.endswith("model_last.pt") and state.bestMeanDsc == 0.5
    assert any("fake engine starting" in line for line in task.log)  # stderr reaches the log


def test_non_json_output_goes_to_the_log(tmp_path):
    task = fakeTask(tmp_path, {"mode": "noise", "iterations": 3}).start()
    state = task.wait(timeout=60)
    assert state.status is RunStatus.FINISHED
    assert sum("noise line" in line for line in task.log) == 3
    assert sum("stderr log" in line for line in task.log) == 3
    assert [e.iteration for e in task.events if isinstance(e, ProgressEvent) and e.phase == "train"] == [1, 2, 3]


def test_engine_error_surfaces_with_hint(tmp_path):
    task = fakeTask(tmp_path, {"mode": "error"}).start()
    state = task.wait(timeout=60)
    assert state.status is RunStatus.FAILED and state.exitCode == 3
    assert "geometry differs" in state.message and "Resample" in state.hint
    assert any(isinstance(e, ErrorEvent) for e in task.events)
    assert any(line.startswith("ERROR:") for line in task.log)


def test_crash_without_done_is_failed(tmp_path):
    task = fakeTask(tmp_path, {"mode": "crash"}).start()
    state = task.wait(timeout=60)
    assert state.status is RunStatus.FAILED and state.exitCode == 1 and "internal" in state.message


def test_graceful_cancel_keeps_checkpoint_and_leaves_no_process(tmp_path):
    task = fakeTask(tmp_path, {"iterations": 1000, "sleep": 0.05, "children": 2}).start()
    waitFor(lambda: task.state.iteration >= 2, task)
    waitFor(lambda: len(task.process.descendants) >= 2, task)
    task.cancel(timeout=20)
    assert task.state.status is RunStatus.CANCELLING
    state = task.wait(timeout=60)
    assert state.status is RunStatus.CANCELLED and state.exitCode == 10 and not task.process.killed
    assert (tmp_path / "out" / "model_last.pt").is_file()
    assert state.model.endswith("model_last.pt")
    assert isinstance(task.events[-1], DoneEvent) and task.events[-1].status == "cancelled"
    assert task.process.aliveProcesses() == []


def test_stubborn_engine_is_killed_with_its_tree(tmp_path):
    task = fakeTask(tmp_path, {"mode": "stubborn", "iterations": 100000, "sleep": 0.05, "children": 2}).start()
    waitFor(lambda: len(task.process.descendants) >= 2 and task.state.iteration >= 1, task)
    pids = [task.process.pid, *task.process.descendants]
    task.cancel(timeout=0.5)
    started = time.time()
    state = task.wait(timeout=30)
    assert time.time() - started < 15
    assert state.status is RunStatus.CANCELLED and task.process.killed and "killed" in state.message
    gone = []
    for pid in pids:
        try:
            gone.append(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            gone.append(True)
    assert all(gone), "a process of the engine tree survived"


def test_poll_never_blocks(tmp_path):
    task = fakeTask(tmp_path, {"iterations": 3, "sleep": 0.3}).start()
    started = time.time()
    for _ in range(5):
        task.poll()
    assert time.time() - started < 0.5
    task.wait(timeout=60)
