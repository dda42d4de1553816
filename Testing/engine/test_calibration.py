"""Post-hoc logit offsets (calibration.py): the fit against brute force, infer --logit-offset / --calibrated,
calibrate, and what training stores and says (the over-fitting alarm)."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from AsymSegTrainer import cli
from AsymSegTrainer.calibration import OFFSET_GRID, adjust, fit_offsets, offset_vector, parse_offsets
from AsymSegTrainer.errors import InputError
from AsymSegTrainer.events import EventSink
from AsymSegTrainer.jobspec import job_from_dataset, job_from_dict
from AsymSegTrainer.network import load_model_file
from AsymSegTrainer.training import CROSSING_ALARM, Trainer

from conftest import TINY_NETWORK, UNPLANNED

NAMES = ["background", "lesion", "edema"]


def _cases(seed=0, n=2, shape=(6, 7, 8)):
    rng = np.random.default_rng(seed)
    labels = [rng.choice(3, size=shape, p=[0.8, 0.1, 0.1]) for _ in range(n)]
    # logits that favour the true class a little, with noise: the boundary is not where DSC is best
    logits = [rng.normal(0, 1.5, (3,) + shape).astype(np.float32) + 1.0 * np.eye(3)[y].transpose(3, 0, 1, 2)
              - np.array([0, 1.0, 0.5])[:, None, None, None] for y in labels]
    return logits, labels


def _mean_dsc(logits, labels, vector, c):
    def dice(a, b):
        return 2.0 * (a & b).sum() / (a.sum() + b.sum())

    scores = [dice(np.argmax(adjust(z, vector), 0) == c, y == c) for z, y in zip(logits, labels) if (y == c).any()]
    return float(np.mean(scores))


def test_fitted_offsets_are_the_grid_optimum_found_by_brute_force():
    logits, labels = _cases()
    record = fit_offsets(logits, labels, NAMES, [0.0, 1.0, 1.0])
    vector = np.zeros(3, np.float32)
    for c, name in ((1, "lesion"), (2, "edema")):  # coordinate-wise, in class order, as documented
        scores = []
        for o in OFFSET_GRID:
            trial = vector.copy()
            trial[c] = o
            scores.append(_mean_dsc(logits, labels, trial, c))
        best = max(scores)
        expected = min((o for o, s in zip(OFFSET_GRID, scores) if s >= best - 1e-12), key=abs)
        assert record["offsets"][name] == pytest.approx(expected)
        assert record["dsc_after"][name] == pytest.approx(best)
        assert record["dsc_before"][name] == pytest.approx(_mean_dsc(logits, labels, vector, c))
        vector[c] = expected
    assert record["offsets"]["lesion"] > 0  # the lesion logit was pushed down by 1: the fit moves it back
    assert "background" not in record["offsets"] and record["validation_cases"] == 2


def test_offset_strings_are_checked_and_named():
    assert parse_offsets(["lesion=1.5", "edema=-2"], NAMES) == {"lesion": 1.5, "edema": -2.0}
    np.testing.assert_array_equal(offset_vector({"edema": -2.0}, NAMES), [0.0, 0.0, -2.0])
    assert offset_vector({}, NAMES) is None
    for strings, problem in ((["tumour=1"], "no class 'tumour'"), (["lesion"], "not NAME=VALUE"),
                             (["lesion=big"], "is not a finite number"), (["lesion=nan"], "is not a finite number"),
                             (["lesion=1", "lesion=2"], "twice")):
        with pytest.raises(InputError, match=problem):
            parse_offsets(strings, NAMES)


@pytest.fixture(scope="module")
def run(phantom_dataset, tmp_path_factory):
    """A tiny run with a validation case: it stores post-processing and offsets in both model files."""
    root = tmp_path_factory.mktemp("calibration")
    spec = job_from_dataset(phantom_dataset, ["lesion=1"], ["phantom_000", "phantom_001"], ["phantom_002"],
                            output=str(root / "run"), network=TINY_NETWORK, patch_size=[16, 16, 16], batch_size=2,
                            iterations=6, validation_interval=3, device="cpu", logit_statistics=False, **UNPLANNED)
    sink = EventSink(progress_bar=False)
    result = Trainer(job_from_dict(spec, root), sink).run()
    return result, sink.events


def _infer(model, dataset, out, *extra):
    case = "phantom_003"
    images = [str(dataset / "imagesTr" / f"{case}_{c:04d}.nii.gz") for c in range(2)]
    code = cli.main(["infer", "--model", str(model), "--images", *images, "--out", str(out), "--postprocess", "none",
                     *extra])
    return code, (sitk.GetArrayFromImage(sitk.ReadImage(str(out))) if code == 0 else None)


def test_predicted_volume_is_monotonic_in_the_offset_and_minus_100_empties_the_class(run, phantom_dataset, tmp_path):
    result, _ = run
    volumes = []
    for value in (-100, -2, 0, 2, 100):
        code, label = _infer(result.model, phantom_dataset, tmp_path / f"p{value}.nii.gz", "--logit-offset",
                             f"lesion={value}")
        assert code == 0
        volumes.append(int((label == 1).sum()))
    assert volumes == sorted(volumes) and volumes[0] == 0 and volumes[-1] == label.size
    stats = json.loads((tmp_path / "p2_logits.json").read_text())
    assert stats["metadata"]["logit_offsets"] == {"lesion": 2.0}


def test_training_stores_offsets_and_calibrate_and_infer_calibrated_agree(run, phantom_dataset, tmp_path):
    result, events = run
    for name in ("model_best.pt", "model_last.pt"):
        _, meta = load_model_file(result.model.parent / name)
        assert set(meta["calibration"]["offsets"]) == {"lesion"} and meta["calibration"]["cases"] == ["phantom_002"]
        assert meta["calibration"]["dsc_after"]["lesion"] >= meta["calibration"]["dsc_before"]["lesion"]
    stored = load_model_file(result.model)[1]["calibration"]["offsets"]["lesion"]
    assert cli.main(["calibrate", "--model", str(result.model)]) == 0  # again, from the run's job.json: same fit
    assert load_model_file(result.model)[1]["calibration"]["offsets"]["lesion"] == stored
    _, calibrated = _infer(result.model, phantom_dataset, tmp_path / "cal.nii.gz", "--calibrated")
    _, explicit = _infer(result.model, phantom_dataset, tmp_path / "exp.nii.gz", "--logit-offset", f"lesion={stored}")
    np.testing.assert_array_equal(calibrated, explicit)


def test_calibrated_without_stored_offsets_and_calibrate_without_validation_cases_are_input_errors(
        phantom_dataset, tmp_path, capsys):
    spec = job_from_dataset(phantom_dataset, ["lesion=1"], ["phantom_000"], [], output=str(tmp_path / "run"),
                            network=TINY_NETWORK, patch_size=[16, 16, 16], batch_size=2, iterations=2, device="cpu",
                            logit_statistics=False, **UNPLANNED)
    model = Trainer(job_from_dict(spec, tmp_path), EventSink(progress_bar=False)).run().model
    code, _ = _infer(model, phantom_dataset, tmp_path / "p.nii.gz", "--calibrated")
    assert code == 3 and "holds no calibrated offsets" in capsys.readouterr().err
    assert cli.main(["calibrate", "--model", str(model)]) == 3
    assert "had no validation cases" in capsys.readouterr().err
    assert cli.main(["calibrate", "--model", str(model), "--dataset", str(phantom_dataset), "--cases",
                     "phantom_002"]) == 0
    assert load_model_file(model)[1]["calibration"]["cases"] == ["phantom_002"]


def test_validation_reports_crossing_rates_as_one_minus_sensitivity(run):
    _, events = run
    validations = [e for e in events if e["type"] == "validation"]
    assert validations
    for event in validations:
        crossing = event["crossing"]["lesion"]
        assert crossing["validation"] == pytest.approx(1 - event["metrics"]["lesion"]["sensitivity"])
        assert 0.0 <= crossing["train"] <= 1.0


def test_the_overfitting_alarm_warns_once_per_class_when_validation_misses_much_more(tmp_path):
    trainer = Trainer.__new__(Trainer)  # only the alarm's state and sink are needed
    trainer.sink, trainer.alarmed = EventSink(progress_bar=False), set()
    close = {"lesion": {"train": 0.30, "validation": 0.30 + CROSSING_ALARM - 0.01}}
    trainer._overfitting_alarm(100, close)
    assert not [e for e in trainer.sink.events if e["type"] == "warning"]
    far = {"lesion": {"train": 0.02, "validation": 0.41}, "edema": {"train": None, "validation": 0.9}}
    trainer._overfitting_alarm(200, far)
    trainer._overfitting_alarm(300, far)
    warnings = [e for e in trainer.sink.events if e["type"] == "warning"]
    assert len(warnings) == 1 and "Over-fitting of lesion at iteration 200" in warnings[0]["message"]
    assert "41%" in warnings[0]["message"] and "2%" in warnings[0]["message"]
    assert "calibrate" in warnings[0]["hint"]
