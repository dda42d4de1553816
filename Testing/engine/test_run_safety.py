"""Nothing lost, nothing silently wrong: one run per folder, resume that keeps history, exit codes that hold."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from AsymSegTrainer import cli as cli_module
from AsymSegTrainer import training
from AsymSegTrainer.errors import InputError, ResourceError
from AsymSegTrainer.events import EventSink
from AsymSegTrainer.files import atomic_output
from AsymSegTrainer.jobspec import job_from_dataset, job_from_dict
from AsymSegTrainer.locks import FolderLock
from AsymSegTrainer.network import load_model_file

from conftest import TINY_NETWORK

SETTINGS = {"network": TINY_NETWORK, "patch_size": [16, 16, 16], "batch_size": 2, "device": "cpu",
            "logit_statistics": False}


def make_job(dataset, out, iterations=2, val=("phantom_002",), **settings):
    spec = job_from_dataset(dataset, ["lesion=1"], ["phantom_000", "phantom_001"], list(val),
                            **{**SETTINGS, "output": str(out), "iterations": iterations, "validation_interval": 1,
                               **settings})
    return job_from_dict(spec, Path(out).parent)


def train(job, resume=False):
    sink = EventSink()
    try:
        return training.Trainer(job, sink).run(resume=resume), sink.events
    finally:
        sink.close()


def main(capsys, *args):
    """Run the CLI in-process with --events; (exit code, events)."""
    code = cli_module.main([*map(str, args), "--events"])
    return code, [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def cli_args(dataset, out, *extra):
    return ["train", "--dataset", dataset, "--classes", "lesion=1", "--train-cases", "phantom_000,phantom_001",
            "--val-cases", "phantom_002", "--preset", "vanilla", "--iterations", 2, "--patch-size", 16, 16, 16,
            "--batch-size", 2, "--device", "cpu", "--out", out, *extra]


# ------------------------------------------------------------------ one run per folder

def test_a_second_run_on_a_locked_folder_exits_3_at_once_naming_the_holder(phantom_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from AsymSegTrainer.locks import FolderLock; "
                               f"lock = FolderLock({str(out)!r}).acquire(); print('locked', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.perf_counter()
        code, events = main(capsys, *cli_args(phantom_dataset, out))
        assert time.perf_counter() - started < 10
    finally:
        holder.kill()
        holder.wait()
    assert code == 3 and events[-1]["status"] == "failed"
    assert f"is in use by process {holder.pid}" in events[-2]["message"]
    assert sorted(p.name for p in out.iterdir()) == [".asymseg.lock"]  # nothing else was written
    assert FolderLock(out).acquire()  # the holder died: its lock went with it


def test_foreign_files_in_the_output_folder_are_refused_and_kept(phantom_dataset, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    mine = {"job.json": b'{"my": "own job"}', "STOP": b"my notes", "validation.json": b"[1, 2]", "notes.txt": b"x"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    with pytest.raises(InputError, match="holds files AsymSeg did not write: STOP, job.json, notes.txt, validation.json"):
        train(make_job(phantom_dataset, out))
    assert {n: (out / n).read_bytes() for n in mine} == mine


@pytest.mark.parametrize("name", ["job.json", "STOP", "validation.json"])
def test_a_users_file_with_an_engine_name_is_never_overwritten(phantom_dataset, tmp_path, name):
    out = tmp_path / "run"
    out.mkdir()
    (out / name).write_text('{"cases": "my own job"}')
    with pytest.raises(InputError, match=f"holds files AsymSeg did not write: {name}"):
        train(make_job(phantom_dataset, out))
    assert (out / name).read_text() == '{"cases": "my own job"}'


def test_a_run_that_failed_before_training_can_be_started_again(phantom_dataset, tmp_path):
    out = tmp_path / "run"
    failing = make_job(phantom_dataset, out)
    failing.class_map = type(failing.class_map)({"background": [0], "lesion": [7]}, "background")  # no such voxel
    with pytest.raises(InputError, match="None of the training cases contains a voxel"):
        train(failing)  # fails after writing its job.json, log and events
    assert {"job.json", "log.txt", "events.jsonl"} <= {p.name for p in out.iterdir()}
    result, _ = train(make_job(phantom_dataset, out))
    assert result.status == "finished"


def test_a_failed_check_releases_the_lock(phantom_dataset, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("x")
    with pytest.raises(InputError):
        train(make_job(phantom_dataset, out))
    FolderLock(out).acquire().release()


# ------------------------------------------------------------------ resume

def test_resume_without_model_last_is_refused_and_model_best_is_kept(phantom_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    result, _ = train(make_job(phantom_dataset, out))
    (out / "model_last.pt").unlink()
    best = (out / "model_best.pt").read_bytes()
    code, events = main(capsys, *cli_args(phantom_dataset, out, "--resume"))
    assert code == 3 and "--resume was given but" in events[-2]["message"]
    assert (out / "model_best.pt").read_bytes() == best


def _set_best_score(model: Path, score: float) -> None:
    """Every validation so far scored ``score``: the state a resumed run replays (checkpointing.ValidationCurve)."""
    state = torch.load(model, weights_only=True)
    meta = json.loads(state["meta"])
    for entry in meta["validation"]["history"]:
        entry["mean_dsc"] = score
    state["meta"] = json.dumps(meta)
    torch.save(state, model)


def test_resume_keeps_the_best_score_and_the_validation_history(phantom_dataset, tmp_path):
    out = tmp_path / "run"
    train(make_job(phantom_dataset, out, iterations=2))
    history = json.loads((out / "validation.json").read_text())
    assert [h["iteration"] for h in history] == [1, 2]
    _set_best_score(out / "model_last.pt", 1.5)  # a score no new validation can beat
    best, _ = load_model_file(out / "model_best.pt")
    result, events = train(make_job(phantom_dataset, out, iterations=4), resume=True)
    assert result.status == "finished" and result.iteration == 4
    after_best, _ = load_model_file(out / "model_best.pt")  # never replaced by a worse model:
    assert after_best["iteration"] == best["iteration"] == 2
    assert all(torch.equal(after_best["state_dict"][k], v) for k, v in best["state_dict"].items())
    assert result.model == out / "model_best.pt"
    assert [e["best"] for e in events if e["type"] == "validation"] == [False, False]
    after = json.loads((out / "validation.json").read_text())
    assert [h["metrics"] for h in after[:2]] == [h["metrics"] for h in history]
    assert [h["iteration"] for h in after] == [1, 2, 3, 4]
    assert load_model_file(out / "model_last.pt")[1]["validation"]["best_smoothed"] == 1.5


def test_resume_with_another_job_says_what_changed(phantom_dataset, tmp_path):
    out = tmp_path / "run"
    train(make_job(phantom_dataset, out))
    last = (out / "model_last.pt").read_bytes()
    with pytest.raises(InputError, match="the job differs from the run in .* in learning_rate, technique"):
        train(make_job(phantom_dataset, out, learning_rate=0.01, technique="asymmetric-focal"), resume=True)
    assert (out / "model_last.pt").read_bytes() == last


def test_stale_temporary_files_of_a_killed_run_are_removed(phantom_dataset, tmp_path):
    out = tmp_path / "run"
    train(make_job(phantom_dataset, out))
    stale = out / ".model_last.0123abcd.tmp.pt"
    stale.write_bytes(b"half a checkpoint")
    train(make_job(phantom_dataset, out, iterations=3), resume=True)
    assert not stale.exists()


# ------------------------------------------------------------------ jobs and validation

def test_a_case_in_training_and_validation_is_an_error(phantom_dataset):
    with pytest.raises(InputError, match="Case phantom_001 is both a train and a validation case"):
        job_from_dataset(phantom_dataset, ["lesion=1"], ["phantom_000", "phantom_001"], ["phantom_001"])


def test_the_same_images_under_two_ids_are_an_error(phantom_dataset, tmp_path):
    spec = job_from_dataset(phantom_dataset, ["lesion=1"], ["phantom_000", "phantom_001"], [])
    spec["cases"][1]["images"] = spec["cases"][0]["images"]
    with pytest.raises(InputError, match="uses the image .*phantom_000_0000.nii.gz in two cases, phantom_000 and "
                                         "phantom_001"):
        job_from_dict(spec, tmp_path)


def _empty_label_dataset(phantom_dataset, tmp_path):
    import shutil

    import SimpleITK as sitk
    data = tmp_path / "data"
    shutil.copytree(phantom_dataset, data)
    label = data / "labelsTr" / "phantom_002.nii.gz"
    image = sitk.ReadImage(str(label))
    sitk.WriteImage(image * 0, str(label))
    return data


def test_validation_without_the_rare_class_is_refused_before_training(phantom_dataset, tmp_path):
    data = _empty_label_dataset(phantom_dataset, tmp_path)
    with pytest.raises(InputError, match=r"No validation case \(phantom_002\) contains a voxel of the rare class"):
        train(make_job(data, tmp_path / "run"))
    assert not (tmp_path / "run" / "model_last.pt").exists()
    result, events = train(make_job(data, tmp_path / "run2", val=("phantom_002", "phantom_003")))
    warnings = [e["message"] for e in events if e["type"] == "warning"]
    assert any("Validation case phantom_002 has no voxel of lesion" in w for w in warnings)


# ------------------------------------------------------------------ exit codes keep their promise

def test_train_dataset_without_out_is_an_input_error(phantom_dataset, capsys):
    args = cli_args(phantom_dataset, "x")[:-2]
    code, events = main(capsys, *args)
    assert code == 3 and "needs --out" in events[-2]["message"]


def test_nan_learning_rate_is_an_input_error(phantom_dataset, tmp_path, capsys):
    code, events = main(capsys, *cli_args(phantom_dataset, tmp_path / "run", "--learning-rate", "nan"))
    assert code == 3 and "'learning_rate' must be a finite number" in events[-2]["message"]


def test_sigterm_outside_the_training_loop_is_a_cancel(phantom_dataset, tmp_path, capsys, monkeypatch):
    def load_then_signal(self):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while cases are loading
        time.sleep(5)
    monkeypatch.setattr(training.Trainer, "_load_cases", load_then_signal)
    code, events = main(capsys, *cli_args(phantom_dataset, tmp_path / "run"))
    assert code == 10 and events[-1]["status"] == "cancelled" and events[-1]["exit_code"] == 10
    assert [e["type"] for e in events].count("done") == 1
    assert signal.getsignal(signal.SIGTERM) is not cli_module._cancel  # the CLI's handler is removed again


def test_cpu_out_of_memory_is_a_resource_error(phantom_dataset, tmp_path, capsys, monkeypatch):
    def no_memory(self):
        raise MemoryError()
    monkeypatch.setattr(training.Trainer, "_load_cases", no_memory)
    code, events = main(capsys, *cli_args(phantom_dataset, tmp_path / "run"))
    assert code == 4 and events[-2]["kind"] == "resource"
    assert "computer (RAM) ran out of memory" in events[-2]["message"]


def test_disk_full_while_logging_is_a_resource_error(tmp_path):
    sink = EventSink(progress_bar=False)
    sink.attach(tmp_path)

    class FullDisk:
        name = str(tmp_path / "events.jsonl")

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            raise OSError(errno.ENOSPC, "No space left on device")
    sink._events_file = FullDisk()
    with pytest.raises(ResourceError, match="The disk is full"):
        sink.emit("warning", message="m", hint="")
    sink.emit("warning", message="still reported", hint="")  # the files are detached, stdout/stderr go on
    assert sink.events[-1]["message"] == "still reported"
    sink.close()


def test_disk_full_during_a_checkpoint_is_named_as_such(tmp_path, monkeypatch):
    import shutil
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100, 100, 0))
    with pytest.raises(ResourceError, match="The disk is full while writing .*model_last.pt"):
        with atomic_output(tmp_path / "model_last.pt") as tmp:
            raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")


def test_log_files_replaced_by_links_are_not_followed(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.txt").symlink_to(outside)
    sink = EventSink(progress_bar=False)
    with pytest.raises(InputError, match="log.txt is a symbolic link"):
        sink.attach(out)
    sink.close()
    assert outside.read_text() == "precious\n"


def test_a_path_that_is_not_utf8_is_an_input_error(tmp_path, capsys):
    folder = os.fsdecode(bytes(tmp_path) + b"/caf\xe9")
    code, events = main(capsys, "infer", "--model", "m.pt", "--images", folder + "/a.nii.gz", "--out", "p.nii.gz")
    assert code == 3 and "not valid UTF-8" in events[-2]["message"]
