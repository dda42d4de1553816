"""Nothing lost, nothing silently wrong for infer, evaluate and bench: outputs never overwrite inputs, a case
fails whole, one command per output folder, missing predictions are not averaged away, input problems exit 3."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator

import pytest
import torch

from AsymSegTrainer import cli as cli_module
from AsymSegTrainer import inference
from AsymSegTrainer.errors import InputError
from AsymSegTrainer.events import EventSink
from AsymSegTrainer.files import refuse_overwriting_inputs
from AsymSegTrainer.inference import infer_case, infer_dataset

REPO = Path(__file__).resolve().parents[2]


def run_cli(capsys, *args):
    """The CLI in-process with --events: (exit code, events)."""
    code = cli_module.main([*map(str, args), "--events"])
    return code, [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def error_of(events) -> str:
    """The message of the run's error event."""
    return next(e["message"] for e in events if e["type"] == "error")


def snapshot(folder: Path) -> Dict[str, bytes]:
    """Every file below ``folder`` with its bytes: equal snapshots mean nothing was changed, added or removed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def held(folder: Path) -> Iterator[int]:
    """Another process holds ``folder``'s lock (locks.FolderLock) while the block runs; yields its process id."""
    code = ("import time; from AsymSegTrainer.locks import FolderLock; "
            f"lock = FolderLock({str(folder)!r}).acquire(); print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def bench_args(data: Path, out: Path, *extra):
    """A --quick bench of one run (vanilla, fold 0, seed 0)."""
    return ["bench", "--dataset", data, "--classes", "lesion=1", "--train-size", 2, "--folds", 1, "--methods",
            "vanilla", "--iterations", 1, "--quick", "--device", "cpu", "--out", out, *extra]


@pytest.fixture(scope="module")
def model(phantom_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("safety") / "run"
    assert cli_module.main(["train", "--dataset", str(phantom_dataset), "--classes", "lesion=1", "--train-cases",
                            "phantom_000", "--preset", "vanilla", "--iterations", "1", "--patch-size", "16", "16",
                            "16", "--batch-size", "2", "--device", "cpu", "--out", str(out)]) == 0
    return out / "model_last.pt"


@pytest.fixture
def data(phantom_dataset, tmp_path) -> Path:
    """A private copy of the phantom dataset: a test that failed to refuse could not damage the shared one."""
    return Path(shutil.copytree(phantom_dataset, tmp_path / "data"))


def images(data: Path, case: str = "phantom_001"):
    """The two channel files of a case of the dataset."""
    return [data / "imagesTr" / f"{case}_{c:04d}.nii.gz" for c in (0, 1)]


# ------------------------------------------------------------------ outputs never overwrite inputs

def test_the_check_compares_resolved_paths_and_file_identity(tmp_path):
    folder = tmp_path / "ds"
    (folder / "labels").mkdir(parents=True)
    label = folder / "labels" / "gt.nii.gz"
    label.write_bytes(b"ground truth")
    (tmp_path / "link.nii.gz").symlink_to(label)
    os.link(label, tmp_path / "hard.nii.gz")
    inputs = {"--label": label, "dataset folder (--dataset)": folder, "--mask": None}
    for output in (label, tmp_path / "link.nii.gz", tmp_path / "hard.nii.gz", folder / "labels" / ".." / "labels" /
                   "gt.nii.gz"):
        with pytest.raises(InputError) as info:
            refuse_overwriting_inputs([output], {"--label": label})
        assert info.value.message == f"The output {output} is the input --label {label}."
    with pytest.raises(InputError) as info:
        refuse_overwriting_inputs([tmp_path / "out.nii.gz", folder / "preds" / "p.nii.gz"], inputs)
    assert info.value.message == (f"The output {folder / 'preds' / 'p.nii.gz'} lies inside the input dataset folder "
                                  f"(--dataset) {folder}.")
    refuse_overwriting_inputs([tmp_path / "ds2", tmp_path, tmp_path / "labels" / "gt.nii.gz"], inputs)  # all outside
    assert label.read_bytes() == b"ground truth"


@pytest.mark.parametrize("clash", ["channel", "label", "side file"])
def test_infer_refuses_an_output_over_an_input_and_leaves_the_inputs_intact(model, data, tmp_path, capsys, clash):
    channels = images(data)
    label = data / "labelsTr" / "phantom_001.nii.gz"
    if clash == "side file":  # infer removes a stale <stem>_probabilities.nii.gz: here it is an input
        channels[1] = Path(shutil.copy(channels[1], tmp_path / "pred_probabilities.nii.gz"))
    out, victim, what = {"channel": (channels[0], channels[0], "image 0 (--images)"),
                         "label": (label, label, "--label"),
                         "side file": (tmp_path / "pred.nii.gz", channels[1], "image 1 (--images)")}[clash]
    before = snapshot(tmp_path)
    code, events = run_cli(capsys, "infer", "--model", model, "--images", *channels, "--label", label, "--out", out,
                           "--device", "cpu")
    assert code == 3 and error_of(events) == f"The output {victim} is the input {what} {victim}."
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("inside", ["labelsTr", "."])
def test_infer_dataset_refuses_an_out_dir_in_the_dataset(model, data, capsys, inside):
    before = snapshot(data)
    code, events = run_cli(capsys, "infer", "--model", model, "--dataset", data, "--out-dir", data / inside,
                           "--device", "cpu")
    relation = "is" if inside == "." else "lies inside"
    assert code == 3
    assert error_of(events) == f"The output {(data / inside).absolute()} {relation} the input dataset folder " \
                               f"(--dataset) {data}."
    assert snapshot(data) == before


def test_evaluate_and_bench_refuse_an_output_folder_in_the_dataset(data, capsys):
    before = snapshot(data)
    code, events = run_cli(capsys, "evaluate", "--predictions", data / "labelsTr", "--dataset", data,
                           "--out", data / "labelsTr")
    assert code == 3 and error_of(events) == (f"The output {data / 'labelsTr'} lies inside the input dataset folder "
                                              f"(--dataset) {data}.")
    code, events = run_cli(capsys, *bench_args(data, data / "bench"))
    assert code == 3 and error_of(events) == (f"The output {data / 'bench'} lies inside the input dataset folder "
                                              f"(--dataset) {data.resolve()}.")
    assert snapshot(data) == before


# ------------------------------------------------------------------ a case is written whole or not at all

def _fail_metrics(*args, **kwargs):
    raise MemoryError("injected after the label map was computed")


def test_a_failure_mid_case_leaves_no_prediction(model, data, tmp_path, monkeypatch):
    out = tmp_path / "pred.nii.gz"
    label = data / "labelsTr" / "phantom_001.nii.gz"
    infer_case(model, images(data), out, label=label, device="cpu", sink=EventSink(progress_bar=False))
    assert out.is_file()  # an earlier, complete run
    monkeypatch.setattr(inference, "raw_and_post", _fail_metrics)
    with pytest.raises(MemoryError):
        infer_case(model, images(data), out, label=label, device="cpu", sink=EventSink(progress_bar=False))
    assert not out.exists()  # neither a new one without its metrics nor the old one beside new companions


def test_a_dataset_run_failing_at_its_second_case_keeps_only_whole_cases(model, data, tmp_path, monkeypatch):
    out, cases = tmp_path / "preds", ["phantom_001", "phantom_002"]
    infer_dataset(model, data, cases, out, device="cpu", sink=EventSink(progress_bar=False))
    assert (out / "metrics.json").is_file() and (out / "logit_statistics.json").is_file()
    original, calls = inference.raw_and_post, []

    def second_case_fails(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs) if len(calls) == 1 else _fail_metrics()
    monkeypatch.setattr(inference, "raw_and_post", second_case_fails)
    with pytest.raises(MemoryError):
        infer_dataset(model, data, cases, out, device="cpu", sink=EventSink(progress_bar=False))
    assert (out / "phantom_001.nii.gz").is_file() and not (out / "phantom_002.nii.gz").exists()
    assert not (out / "metrics.json").exists() and not (out / "logit_statistics.json").exists()  # not the old ones


# ------------------------------------------------------------------ one command per output folder

@pytest.mark.parametrize("command", ["infer", "evaluate"])
def test_a_locked_output_folder_is_refused_at_once_naming_the_holder(model, data, tmp_path, capsys, command):
    out = tmp_path / "out"
    args = {"infer": ["infer", "--model", model, "--dataset", data, "--out-dir", out, "--device", "cpu"],
            "evaluate": ["evaluate", "--predictions", data / "labelsTr", "--dataset", data, "--out", out]}[command]
    with held(out) as pid:
        started = time.perf_counter()
        code, events = run_cli(capsys, *args)
        assert time.perf_counter() - started < 10
    assert code == 3 and error_of(events) == f"The output folder {out} is in use by process {pid}."
    assert [p.name for p in out.iterdir()] == [".asymseg.lock"]  # nothing else was written


def test_bench_refuses_a_folder_that_another_command_holds(data, tmp_path, capsys):
    out = tmp_path / "bench"
    with held(out) as pid:
        code, events = run_cli(capsys, *bench_args(data, out))
    assert code == 3 and error_of(events) == f"The output folder {out} is in use by process {pid}."
    assert sorted(p.name for p in out.iterdir()) == [".aggregate.lock", ".asymseg.lock"]  # no bench.json, no runs


def test_a_bench_run_whose_training_folder_is_locked_exits_3_and_gives_up_its_claim(data, tmp_path, capsys):
    out = tmp_path / "bench"
    train = out / "runs" / "vanilla" / "fold0_seed0" / "train"
    with held(train) as pid:
        code, events = run_cli(capsys, *bench_args(data, out))
    assert code == 3 and error_of(events) == f"The output folder {train} is in use by process {pid}."
    assert sorted(p.name for p in train.parent.iterdir()) == ["train"]  # claim released, no run.json


# ------------------------------------------------------------------ evaluate: no silent average over fewer cases

def test_evaluate_refuses_missing_predictions_unless_allowed(data, tmp_path, capsys):
    predictions = Path(shutil.copytree(data / "labelsTr", tmp_path / "preds"))  # perfect predictions ...
    (predictions / "phantom_003.nii.gz").unlink()  # ... of three of the four cases
    args = ["evaluate", "--predictions", predictions, "--dataset", data, "--out", tmp_path / "eval"]
    code, events = run_cli(capsys, *args)
    assert code == 3 and error_of(events) == (f"No prediction for case(s) phantom_003 in {predictions} (1 of 4; "
                                              f"expected e.g. {predictions / 'phantom_003.nii.gz'}).")
    assert not (tmp_path / "eval" / "metrics.json").exists()

    code, events = run_cli(capsys, *args, "--allow-missing")
    assert code == 0
    assert [e["message"] for e in events if e["type"] == "warning"] == [
        f"No prediction for case(s) phantom_003 in {predictions}: the metrics average over the 3 of 4 case(s) that "
        f"have one."]
    record = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert record["missing_cases"] == ["phantom_003"] and sorted(record["cases"]) == ["phantom_000", "phantom_001",
                                                                                      "phantom_002"]
    assert record["summary"]["raw"]["lesion"]["dsc"]["n"] == 3
    assert "Means over 3 case(s); 1 without a prediction left out" in (tmp_path / "eval" / "log.txt").read_text()

    code, events = run_cli(capsys, *args, "--cases", "phantom_003", "--allow-missing")  # nothing left to evaluate
    assert code == 3 and "No prediction for case(s) phantom_003" in error_of(events)


# ------------------------------------------------------------------ input problems exit 3, before anything is written

def _no_class_map(tmp_path: Path) -> Path:
    """A model file whose meta has no class map."""
    path = tmp_path / "no_classes.pt"
    torch.save({"format": "asymseg-model", "version": 1, "meta": json.dumps({"channels": ["t1", "t2"]})}, path)
    return path


def _folder_with_an_image_name(tmp_path: Path) -> Path:
    """A folder where infer --out expects a file."""
    path = tmp_path / "out.nii.gz"
    path.mkdir()
    return path


PROBLEMS = {
    "bench --network not an object": (lambda d, m, t: bench_args(d, t / "out", "--network", "[1, 2]"),
                                      "--network must be a JSON object; got [1, 2]."),
    "bench --learning-rate nan": (lambda d, m, t: bench_args(d, t / "out", "--learning-rate", "nan"),
                                  "Job field 'learning_rate' must be a finite number; got nan."),
    "bench --overlap 1.5": (lambda d, m, t: bench_args(d, t / "out", "--overlap", "1.5"),
                            "overlap must be a fraction in [0, 1); got 1.5."),
    "evaluate --model without classes": (
        lambda d, m, t: ["evaluate", "--predictions", d / "labelsTr", "--dataset", d, "--out", t / "out", "--model",
                         _no_class_map(t)],
        "Model file {t}/no_classes.pt holds no class map (KeyError: 'classes')."),
    "infer --out a folder": (lambda d, m, t: ["infer", "--model", m, "--images", *images(d), "--out",
                                              _folder_with_an_image_name(t), "--device", "cpu"],
                             "Output file {t}/out.nii.gz is a folder."),
}


@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_input_problems_exit_3_with_the_field_named(model, data, tmp_path, capsys, problem):
    make_args, message = PROBLEMS[problem]
    code, events = run_cli(capsys, *make_args(data, model, tmp_path))
    assert code == 3 and error_of(events) == message.format(t=tmp_path)
    if problem.startswith("bench"):
        assert not (tmp_path / "out").exists()  # checked before anything was written (no bench.json pinned)
