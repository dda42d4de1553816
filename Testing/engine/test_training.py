"""The training engine: events, presets, cancel/resume, fine-tuning, and every named error."""

import dataclasses
import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from AsymSegTrainer import network as network_module
from AsymSegTrainer.errors import DivergenceError, InputError, ResourceError
from AsymSegTrainer.events import EventSink
from AsymSegTrainer.jobspec import job_from_dataset, job_from_dict
from AsymSegTrainer.losses import AsymmetricLoss
from AsymSegTrainer.network import build_network, load_model_file, load_weights
from AsymSegTrainer.techniques import PRESETS
from AsymSegTrainer.training import Trainer

from conftest import TINY_NETWORK, UNPLANNED

REQUIRED = {
    "start": {"command", "config", "device", "versions", "output"},
    "progress": {"phase", "iteration", "total"},
    "plan": {"plan"},
    "validation": {"iteration", "metrics", "mean_dsc", "smoothed_mean_dsc", "best"},
    "warning": {"message", "hint"},
    "checkpoint": {"kind", "path", "iteration"},
    "error": {"kind", "message", "hint"},
    "done": {"status", "exit_code", "model", "outputs"},
}
TRAIN_PROGRESS = {"loss", "terms", "lr", "iterations_per_second", "eta_seconds"}


def check_event_stream(lines):
    """Every line is one JSON event of a documented type with its keys; start first (unless the run failed
    before it could start: then error, done), done last."""
    events = [json.loads(line) for line in lines]
    for e in events:
        assert e["type"] in REQUIRED, e
        assert REQUIRED[e["type"]] | {"type", "time"} <= set(e), e
        if e["type"] == "progress" and e["phase"] == "train":
            assert TRAIN_PROGRESS <= set(e), e
    assert events[0]["type"] == "start" or [e["type"] for e in events] == ["error", "done"]
    assert events[-1]["type"] == "done" and [e["type"] for e in events].count("done") == 1
    return events


def job(dataset, out, train=("phantom_000", "phantom_001"), val=("phantom_002",), classes=("lesion=1",), **settings):
    spec = job_from_dataset(dataset, list(classes), list(train), list(val),
                            **{"output": str(out), "network": TINY_NETWORK, "patch_size": [16, 16, 16],
                               "batch_size": 2, "iterations": 2, "device": "cpu", "validation_interval": 1,
                               "logit_statistics": False, **UNPLANNED, **settings})
    return job_from_dict(spec, Path(out).parent)


def run(job_obj, resume=False):
    sink = EventSink()
    try:
        result = Trainer(job_obj, sink).run(resume=resume)
    finally:
        sink.close()
    return result, sink.events


def cli(*args, timeout=240, **popen):
    return subprocess.Popen([sys.executable, "-m", "AsymSegTrainer", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


# ------------------------------------------------------------------ end to end through the CLI

def test_cli_train_event_stream_and_outputs(phantom_dataset, tmp_path):
    out = tmp_path / "run"
    spec = job_from_dataset(phantom_dataset, ["lesion=1"], ["phantom_000", "phantom_001"], ["phantom_002"],
                            output="run", network=TINY_NETWORK, patch_size=[16, 16, 16], batch_size=2, iterations=4,
                            device="cpu", validation_interval=2, technique="asymmetric-combination")
    (tmp_path / "job.json").write_text(json.dumps(spec))
    proc = cli("train", "--job", tmp_path / "job.json", "--events")
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr
    events = check_event_stream(stdout.splitlines())
    kinds = [e["type"] for e in events]
    assert kinds.count("validation") == 2 and "checkpoint" in kinds
    train = [e for e in events if e["type"] == "progress" and e["phase"] == "train"]
    assert train[0]["iteration"] == 1 and train[-1]["iteration"] == 4
    assert set(train[0]["terms"]) == {"ce", "adversarial", "mixup"}
    assert train[0]["loss"] == pytest.approx(sum(train[0]["terms"].values()), rel=1e-5)
    done = events[-1]
    assert done["status"] == "finished" and done["exit_code"] == 0
    assert done["model"] == str(out / "model_best.pt")
    state, meta = load_model_file(done["model"])
    assert meta["class_names"] == ["background", "lesion"] and meta["channels"] == ["t1", "t2"]
    assert meta["technique"]["preset"] == "asymmetric-combination" and state["iteration"] in (2, 4)
    for name in ("logit_statistics_train", "logit_statistics_validation", "validation"):
        assert Path(done["outputs"][name]).is_file()
    assert (out / "events.jsonl").read_text().splitlines() == stdout.splitlines()
    assert "validation at iteration 2" in (out / "log.txt").read_text()


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_each_preset_runs_with_its_terms(phantom_dataset, tmp_path, preset):
    settings = PRESETS[preset]
    objective = settings.get("objective", "asymmetric")
    result, events = run(job(phantom_dataset, tmp_path / "run", val=(), iterations=1, technique=preset,
                             loss="ce+dice" if objective == "asymmetric" else "ce"))
    assert result.status == "finished"
    terms = [e for e in events if e["type"] == "progress" and e["phase"] == "train"][0]["terms"]
    expected = {"asymmetric": {"ce", "dice"}, "soft-fbeta": {"fbeta"}, "logit-adjusted": {"ce"}}[objective] \
        | ({"adversarial"} if settings.get("adversarial") else set()) | ({"mixup"} if settings.get("mixup") else set())
    assert set(terms) == expected
    assert all(np.isfinite(v) and v > 0 for v in terms.values())


def test_preset_settings_reach_the_loss(phantom_dataset, tmp_path):
    trainer = Trainer(job(phantom_dataset, tmp_path / "run", technique={"preset": "asymmetric-margin", "margin": 0.3}),
                      EventSink())
    trainer._load_cases()
    trainer._build(resume=False)
    assert (trainer.loss.margin, trainer.loss.gamma, trainer.loss.symmetric) == (0.3, 0.0, False)


def test_cpu_training_is_deterministic(phantom_dataset, tmp_path):
    finals = []
    for name in ("a", "b"):
        result, events = run(job(phantom_dataset, tmp_path / name, val=(), iterations=3,
                                 technique="asymmetric-combination"))
        finals.append(load_model_file(result.model)[0]["state_dict"])
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])


def test_two_dimensional_images(tmp_path):
    from AsymSegTrainer.phantoms import make_phantom_dataset
    data = make_phantom_dataset(tmp_path / "d3", num_cases=2, shape=(16, 32, 32))
    lesion_slice = {case: int(np.argmax((sitk.GetArrayFromImage(sitk.ReadImage(str(data / "labelsTr" / f"{case}.nii.gz")))
                                         > 0).sum((1, 2)))) for case in ("phantom_000", "phantom_001")}
    for f in list((data / "imagesTr").iterdir()) + list((data / "labelsTr").iterdir()):
        img = sitk.ReadImage(str(f))
        arr = sitk.GetArrayFromImage(img)
        z = lesion_slice[f.name[:len("phantom_000")]]  # each case's slice through its lesion
        slice_ = sitk.GetImageFromArray(arr[z:z + 1])
        slice_.SetSpacing(img.GetSpacing())
        sitk.WriteImage(slice_, str(f))
    result, events = run(job(data, tmp_path / "run", train=("phantom_000",), val=("phantom_001",),
                             patch_size=[1, 16, 16], logit_statistics=True))
    assert result.status == "finished"
    assert load_model_file(result.model)[1]["spatial_dims"] == 2
    with pytest.raises(InputError, match="single slices"):
        run(job(data, tmp_path / "run3d", train=("phantom_000",), val=()))


# ------------------------------------------------------------------ cancel and resume

@pytest.mark.parametrize("how", ["stop-file", "sigterm"])
def test_cancel_then_resume(phantom_dataset, tmp_path, how):
    out = tmp_path / "run"
    args = ["train", "--dataset", phantom_dataset, "--classes", "lesion=1", "--train-cases", "phantom_000,phantom_001",
            "--preset", "vanilla", "--iterations", "100000", "--patch-size", "16", "16", "16", "--batch-size", "2",
            "--device", "cpu", "--out", out, "--events"]
    proc = cli(*args)
    for line in proc.stdout:
        event = json.loads(line)
        if event["type"] == "progress" and event["phase"] == "train":
            break
    if how == "sigterm":
        proc.send_signal(signal.SIGTERM)
    else:
        (out / "STOP").touch()
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 10
    done = json.loads(rest.splitlines()[-1])
    assert done["status"] == "cancelled" and done["model"] == str(out / "model_last.pt")
    stopped_at = load_model_file(out / "model_last.pt")[0]["iteration"]
    assert 1 <= stopped_at < 100000

    # --resume continues the iteration count (and the STOP file of the last run is gone)
    total = stopped_at + 2
    args[args.index("--iterations") + 1] = str(total)
    proc = cli(*args, "--resume")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    train = [e for e in map(json.loads, stdout.splitlines()) if e.get("phase") == "train"]
    assert train[0]["iteration"] == stopped_at + 1 and train[-1]["iteration"] == total
    assert load_model_file(out / "model_last.pt")[0]["iteration"] == total


# ------------------------------------------------------------------ fine-tuning

def test_finetune_to_a_different_class_count(phantom_dataset, tmp_path):
    first, _ = run(job(phantom_dataset, tmp_path / "two", val=()))
    result, events = run(job(phantom_dataset, tmp_path / "three", val=(), classes=("lesion=1", "ghost=7"),
                             initial_checkpoint=str(first.model)))
    warnings = [e["message"] for e in events if e["type"] == "warning"]
    assert any("2 classes and this job 3" in w and "re-initialised" in w for w in warnings)
    assert load_model_file(result.model)[1]["class_names"] == ["background", "lesion", "ghost"]


def test_load_weights_keeps_all_but_the_output_layer():
    torch.manual_seed(0)
    two, three = build_network(TINY_NETWORK, 2, 2), build_network(TINY_NETWORK, 2, 3)
    before = {k: v.clone() for k, v in three.state_dict().items()}
    reset = load_weights(three, two.state_dict())
    assert reset and all(two.state_dict()[k].shape != before[k].shape for k in reset)
    for k, v in three.state_dict().items():
        assert torch.equal(v, before[k] if k in reset else two.state_dict()[k])


# ------------------------------------------------------------------ errors: named, actionable, nothing lost

def cli_error(*args):
    proc = cli(*args, "--events")
    stdout, _ = proc.communicate(timeout=120)
    events = check_event_stream(stdout.splitlines())
    assert events[-2]["type"] == "error"
    return proc.returncode, events[-2]


def test_corrupt_image_is_an_input_error(phantom_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(phantom_dataset, data)
    bad = data / "imagesTr" / "phantom_001_0001.nii.gz"
    bad.write_bytes(b"not an image at all")
    code, error = cli_error("train", "--dataset", data, "--classes", "lesion=1", "--train-cases",
                            "phantom_000,phantom_001", "--iterations", "1", "--device", "cpu", "--out", tmp_path / "o")
    assert code == 3 and error["kind"] == "input" and str(bad) in error["message"]


def test_gpu_asked_but_absent(phantom_dataset, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, error = cli_error("train", "--dataset", phantom_dataset, "--classes", "lesion=1", "--train-cases",
                            "phantom_000", "--iterations", "1", "--device", "cuda", "--out", tmp_path / "o")
    assert code == 4 and "no usable CUDA GPU" in error["message"] and "'cpu'" in error["hint"]


def test_empty_foreground_in_every_training_case(phantom_dataset, tmp_path):
    with pytest.raises(InputError, match=r"None of the training cases contains a voxel of the rare class"):
        run(job(phantom_dataset, tmp_path / "run", classes=("lesion=9",)))


def test_output_folder_not_writable(phantom_dataset, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ResourceError, match="not writable"):
        run(job(phantom_dataset, blocker / "run"))


def test_nan_loss_names_the_term(phantom_dataset, tmp_path, monkeypatch):
    real = AsymmetricLoss.terms

    def poisoned(self, logits, target):
        terms = real(self, logits, target)
        terms["dice"] = terms["dice"] * float("nan")
        return terms

    monkeypatch.setattr(AsymmetricLoss, "terms", poisoned)
    with pytest.raises(DivergenceError, match="The dice loss term"):
        run(job(phantom_dataset, tmp_path / "run", loss="ce+dice"))


def test_out_of_memory_keeps_the_last_checkpoint(phantom_dataset, tmp_path, monkeypatch):
    real, calls = Trainer._step, []

    def step(self, *a):
        calls.append(1)
        if len(calls) == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, *a)

    monkeypatch.setattr(Trainer, "_step", step)
    with pytest.raises(ResourceError, match="ran out of memory at iteration 2") as info:
        run(job(phantom_dataset, tmp_path / "run", val=(), iterations=3))
    assert "smaller patch_size or batch_size" in info.value.hint and "model_last.pt" in info.value.hint
    assert load_model_file(tmp_path / "run" / "model_last.pt")[0]["iteration"] == 1


def test_disk_full_mid_checkpoint_keeps_the_previous_one(phantom_dataset, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real, calls = torch.save, []

    def save(obj, f, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            Path(f).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(network_module.torch, "save", save)
    with pytest.raises(ResourceError, match="disk is full") as info:
        run(job(phantom_dataset, out, val=(), iterations=3))
    assert "previous file, if any, is intact" in info.value.message
    assert load_model_file(out / "model_last.pt")[0]["iteration"] == 1
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


def test_bad_job_fields_are_named(phantom_dataset, tmp_path):
    spec = job_from_dataset(phantom_dataset, ["lesion=1"], ["phantom_000"], output=str(tmp_path / "o"))
    for field, value, match in [("patch_size", [20, 20, 20], "not divisible by 8"),
                                ("loss", "focal", "Job field 'loss'"),
                                ("rarity", {"tumour": 1}, "Job field 'rarity'"),
                                ("iterations", 0, "Job field 'iterations' must be >= 1"),
                                ("technique", {"preset": "asymmetric-focal", "gama": 2}, r"unknown setting\(s\) \['gama'\]"),
                                ("technique", "focal", "technique.preset 'focal'"),
                                ("speed", 3, "not a known job field")]:
        with pytest.raises(InputError, match=match):
            job_from_dict({**spec, field: value}, tmp_path)


def test_existing_run_is_never_overwritten(phantom_dataset, tmp_path):
    result, _ = run(job(phantom_dataset, tmp_path / "run", val=()))
    before = (tmp_path / "run" / "model_last.pt").read_bytes()
    with pytest.raises(InputError, match="already holds a trained model"):
        run(job(phantom_dataset, tmp_path / "run", val=()))
    assert (tmp_path / "run" / "model_last.pt").read_bytes() == before


def test_logit_statistics_describe_the_model_handed_out(phantom_dataset, tmp_path, monkeypatch):
    from AsymSegTrainer.data import load_case
    from AsymSegTrainer.logits import LogitStatistics
    from AsymSegTrainer.prediction import predict_logits

    real, calls = Trainer._validate, []

    def validate_best_first(self, iteration):  # the best checkpoint is iteration 2, not the last one
        calls.append(real(self, iteration))
        return dataclasses.replace(calls[-1], best=len(calls) == 1)

    monkeypatch.setattr(Trainer, "_validate", validate_best_first)
    job_obj = job(phantom_dataset, tmp_path / "run", iterations=6, validation_interval=2, logit_statistics=True)
    result, _ = run(job_obj)
    state, meta = load_model_file(result.model)
    assert result.model.name == "model_best.pt" and state["iteration"] == 2
    model = build_network(meta["network"], 2, 2)
    model.load_state_dict(state["state_dict"])
    expected = LogitStatistics(meta["class_names"])
    for spec in job_obj.cases_with_role("train"):
        case = load_case(spec, job_obj.class_map, job_obj.normalization)
        expected.update(predict_logits(model, case.image, meta["patch_size"], torch.device("cpu")), case.label)
    saved = LogitStatistics.load(result.outputs["logit_statistics_train"])
    for g in (0, 1):
        for c in (0, 1):
            assert saved.mean(g, c) == pytest.approx(expected.mean(g, c), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("early_stopping", [True, False])
def test_early_stopping_stops_once_the_smoothed_validation_curve_is_flat(phantom_dataset, tmp_path, monkeypatch,
                                                                         early_stopping):
    from AsymSegTrainer import training
    from AsymSegTrainer.checkpointing import MIN_PROGRESS, PATIENCE, ValidationCurve

    class FlatCurve(ValidationCurve):  # every validation scores 0.5: no improvement after the first
        def update(self, iteration, mean_dsc, total_iterations):
            return super().update(iteration, 0.5, total_iterations)

    monkeypatch.setattr(training, "ValidationCurve", FlatCurve)
    result, events = run(job(phantom_dataset, tmp_path / "run", iterations=20, early_stopping=early_stopping))
    # the first validation is the best; PATIENCE more without improvement, and at least MIN_PROGRESS of the run
    expected = max(1 + PATIENCE, math.ceil(MIN_PROGRESS * 20)) if early_stopping else 20
    assert result.status == "finished" and result.iteration == expected
    assert load_model_file(tmp_path / "run" / "model_last.pt")[0]["iteration"] == expected
    assert [e["iteration"] for e in events if e["type"] == "checkpoint" and e["kind"] == "best"] == [1]
    chosen = [e for e in events if e["type"] == "checkpoint" and e["kind"] == "chosen"]
    assert chosen[0]["iteration"] == 1 and "model_best.pt is iteration 1 of 20" in chosen[0]["reason"]
