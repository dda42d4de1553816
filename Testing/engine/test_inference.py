"""infer: outputs in the input's exact geometry and format, logit statistics, metrics, probabilities, errors, CLI.

One tiny model is trained for a few iterations on generated phantoms (module fixture); the
cases segmented here are written with SimpleITK in an oblique, anisotropic geometry with a
non-zero origin, so any axis or geometry mix-up shows.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from AsymSegTrainer import cli, inference
from AsymSegTrainer.data import read_image, read_nnunet_dataset, spacing_zyx, write_image
from AsymSegTrainer.errors import InputError, ResourceError
from AsymSegTrainer.evaluation import evaluate_folder
from AsymSegTrainer.events import EventSink
from AsymSegTrainer.inference import infer_case, infer_dataset
from AsymSegTrainer.jobspec import job_from_dataset, job_from_dict
from AsymSegTrainer.logits import LogitStatistics
from AsymSegTrainer.metrics import case_metrics, keep_largest_component
from AsymSegTrainer.phantoms import phantom_case
from AsymSegTrainer.network import update_model_meta
from AsymSegTrainer.postprocessing import apply_postprocessing
from AsymSegTrainer.training import Trainer

REPO = Path(__file__).resolve().parents[2]
TINY = {"name": "unet", "channels": [4, 8], "strides": [2], "num_res_units": 1}
DIRECTION = tuple(sitk.VersorTransform((1.0, 2.0, 3.0), 0.4).GetMatrix())  # oblique rotation
SHAPE, SPACING, ORIGIN = (20, 28, 26), (2.0, 0.9, 1.1), (-12.5, 40.0, 7.25)  # (z, y, x), (z, y, x) mm, (x, y, z)


def quiet() -> EventSink:
    return EventSink(progress_bar=False)


@pytest.fixture(scope="module")
def model(phantom_dataset, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("infer_model")
    spec = job_from_dataset(phantom_dataset, ["lesion=1"], ["phantom_000"], [], output=str(root / "run"),
                            network=TINY, patch_size=[16, 16, 16], batch_size=2, iterations=3, device="cpu",
                            learning_rate=1e-2, logit_statistics=False)
    result = Trainer(job_from_dict(spec, root), quiet()).run()
    return result.model


def write_case(folder: Path, ext: str, seed: int = 5) -> SimpleNamespace:
    """Two channels, label and body mask of a phantom in an oblique geometry, as files of format ``ext``."""
    image, label = phantom_case(np.random.default_rng(seed), SHAPE, SPACING)
    reference = sitk.Image(list(reversed(SHAPE)), sitk.sitkUInt8)
    reference.SetSpacing(tuple(reversed(SPACING)))
    reference.SetOrigin(ORIGIN)
    reference.SetDirection(DIRECTION)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [write_image(channel, reference, folder / f"case_{c:04d}{ext}") for c, channel in enumerate(image)]
    return SimpleNamespace(images=[str(p) for p in paths],
                           label=str(write_image(label, reference, folder / f"label{ext}")),
                           mask=str(write_image(image[0] != 0, reference, folder / f"mask{ext}")),
                           label_array=label, mask_array=image[0] != 0)


def array(path) -> np.ndarray:
    return sitk.GetArrayFromImage(read_image(path))


def assert_same_geometry(path, reference_path) -> None:
    a, b = read_image(path), read_image(reference_path)
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(b.GetDirection(), DIRECTION, atol=1e-5)  # the oblique input survived
    np.testing.assert_allclose(b.GetOrigin(), ORIGIN, atol=1e-4)


def probabilities(path) -> np.ndarray:
    image = read_image(path)
    assert image.GetNumberOfComponentsPerPixel() == 2
    return np.moveaxis(sitk.GetArrayFromImage(image), -1, 0)


# ---------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd"])
def test_outputs_are_in_the_input_geometry_and_consistent(model, tmp_path, ext):
    case = write_case(tmp_path / "in", ext)
    out = tmp_path / "out" / f"pred{ext}"
    outputs = infer_case(model, case.images, out, label=case.label, mask=case.mask, probabilities=True, device="cpu",
                         sink=quiet())
    assert outputs == {"prediction": str(out), "logits": str(out.with_name("pred_logits.json")),
                       "metrics": str(out.with_name("pred_metrics.json")),
                       "probabilities": str(out.with_name("pred_probabilities.nii.gz")),
                       "margins": str(out.with_name("pred_margins.nii.gz"))}
    magic = out.read_bytes()[:4]
    assert magic[:2] == b"\x1f\x8b" if ext == ".nii.gz" else magic == b"NRRD"  # format follows the extension
    for name in ("prediction", "probabilities", "margins"):
        assert_same_geometry(outputs[name], case.images[0])
    assert read_image(out).GetPixelID() == sitk.sitkUInt8
    prediction = array(out)
    assert set(np.unique(prediction)) <= {0, 1}

    p = probabilities(outputs["probabilities"])
    np.testing.assert_allclose(p.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.argmax(p, axis=0), prediction)  # label map = argmax, no post-processing
    # margins: z_c - max other z = log p_c - max other log p (softmax keeps logit differences); > 0 where predicted
    margins = probabilities(outputs["margins"])
    log_p = np.log(p.astype(np.float64))
    np.testing.assert_allclose(margins, log_p - log_p[::-1], atol=1e-3)
    assert ((margins[1] > 0) == (prediction == 1)).mean() > 0.999

    record = json.loads(Path(outputs["logits"]).read_text())
    stats = LogitStatistics.load(outputs["logits"])
    assert record["grouped_by"] == "reference" == stats.metadata["grouped_by"]
    for g in (0, 1):  # grouped by the ground truth, inside the ROI mask only
        assert stats.count(g) == np.count_nonzero((case.label_array == g) & case.mask_array) > 0
    assert stats.count(0) + stats.count(1) < prediction.size  # the mask did exclude voxels

    metrics = json.loads(Path(outputs["metrics"]).read_text())
    spacing = spacing_zyx(read_image(case.label))
    reference = array(case.label)
    assert metrics["raw"]["lesion"] == pytest.approx(case_metrics(prediction, reference, spacing, [1])[1])
    assert metrics["post"]["lesion"] == pytest.approx(
        case_metrics(keep_largest_component(prediction, [1]), reference, spacing, [1])[1])
    # trained without validation cases: the model chose no post-processing, the file is the raw argmax
    assert metrics["written"] == "chosen" and metrics["postprocessing"] == {"lesion": "none"}
    assert metrics["chosen"] == metrics["raw"]


def test_largest_component_is_written_when_asked(model, tmp_path):
    case = write_case(tmp_path / "in", ".nii.gz", seed=7)
    outputs = infer_case(model, case.images, tmp_path / "pred.nii.gz", label=case.label, postprocess="largest",
                         probabilities=True, device="cpu", sink=quiet())
    raw = np.argmax(probabilities(outputs["probabilities"]), axis=0).astype(np.uint8)
    written = array(outputs["prediction"])
    structure = ndimage.generate_binary_structure(3, 3)
    assert ndimage.label(raw == 1, structure)[1] > 1  # otherwise this test shows nothing
    np.testing.assert_array_equal(written, keep_largest_component(raw, [1]))
    assert ndimage.label(written == 1, structure)[1] == 1
    metrics = json.loads(Path(outputs["metrics"]).read_text())
    assert metrics["postprocessing"] == {"lesion": "largest"} and metrics["chosen"] == metrics["post"]
    spacing = spacing_zyx(read_image(case.label))
    assert metrics["raw"]["lesion"] == pytest.approx(case_metrics(raw, array(case.label), spacing, [1])[1])
    assert metrics["post"]["lesion"] == pytest.approx(case_metrics(written, array(case.label), spacing, [1])[1])


def test_the_models_post_processing_is_written_unless_the_command_says_otherwise(model, tmp_path):
    case = write_case(tmp_path / "in", ".nii.gz", seed=7)
    chosen = tmp_path / "chosen.pt"
    shutil.copy(model, chosen)
    update_model_meta(chosen, postprocessing={"classes": {"lesion": "min-size=20"}})  # as training stores its choice
    outputs = infer_case(chosen, case.images, tmp_path / "pred.nii.gz", label=case.label, probabilities=True,
                         device="cpu", sink=quiet())
    raw = np.argmax(probabilities(outputs["probabilities"]), axis=0).astype(np.uint8)
    spacing = spacing_zyx(read_image(case.label))
    expected = apply_postprocessing(raw, {"lesion": "min-size=20"}, ["background", "lesion"], spacing)
    assert not np.array_equal(expected, raw)  # otherwise this test shows nothing
    np.testing.assert_array_equal(array(outputs["prediction"]), expected)
    metrics = json.loads(Path(outputs["metrics"]).read_text())
    assert metrics["postprocessing"] == {"lesion": "min-size=20"}
    assert metrics["chosen"]["lesion"] == pytest.approx(case_metrics(expected, array(case.label), spacing, [1])[1])
    override = infer_case(chosen, case.images, tmp_path / "raw.nii.gz", postprocess="none", device="cpu", sink=quiet())
    np.testing.assert_array_equal(array(override["prediction"]), raw)
    parse = cli.build_parser().parse_args
    assert parse(["infer", "--model", "m", "--images", "a", "--largest-component"]).postprocess == "largest"
    assert parse(["infer", "--model", "m", "--images", "a", "--postprocess", "min-size=5"]).postprocess == "min-size=5"
    with pytest.raises(InputError, match="Unknown post-processing"):
        infer_case(chosen, case.images, tmp_path / "x.nii.gz", postprocess="smallest", device="cpu", sink=quiet())


def test_without_label_statistics_are_grouped_by_the_prediction(model, tmp_path):
    case = write_case(tmp_path / "in", ".nrrd")
    infer_case(model, case.images, tmp_path / "out" / "p.mha", label=case.label, probabilities=True, device="cpu",
               sink=quiet())
    outputs = infer_case(model, case.images, tmp_path / "out" / "p.mha", device="cpu", sink=quiet())
    assert set(outputs) == {"prediction", "logits"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p.mha", "p_logits.json"]  # no stale companions
    prediction = array(outputs["prediction"])
    stats = LogitStatistics.load(outputs["logits"])
    assert json.loads(Path(outputs["logits"]).read_text())["grouped_by"] == "prediction"
    assert [stats.count(g) for g in (0, 1)] == [np.count_nonzero(prediction == g) for g in (0, 1)]
    assert min(stats.count(0), stats.count(1)) > 0  # both classes predicted: the grouping is really tested


def test_with_target_spacing_predicts_on_the_resampled_grid_and_writes_the_input_geometry(model, tmp_path,
                                                                                        monkeypatch):
    state = torch.load(model, weights_only=True)
    meta = json.loads(state["meta"])
    meta["target_spacing"] = [1.5, 1.5, 1.5]
    state["meta"] = json.dumps(meta)
    resampling_model = tmp_path / "resampling.pt"
    torch.save(state, resampling_model)
    seen = []
    original = inference.predict_logits

    def spy(network, image, *args, **kwargs):
        seen.append(image.shape)
        return original(network, image, *args, **kwargs)

    monkeypatch.setattr(inference, "predict_logits", spy)
    case = write_case(tmp_path / "in", ".nii.gz")
    outputs = infer_case(resampling_model, case.images, tmp_path / "pred.nii.gz", label=case.label, mask=case.mask,
                         probabilities=True, device="cpu", sink=quiet())
    expected = tuple(round(n * s / 1.5) for n, s in zip(SHAPE, SPACING))
    assert seen == [(2,) + expected] and expected != SHAPE
    for name in ("prediction", "probabilities"):
        assert_same_geometry(outputs[name], case.images[0])
    p = probabilities(outputs["probabilities"])
    np.testing.assert_allclose(p.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.argmax(p, axis=0), array(outputs["prediction"]))
    stats = LogitStatistics.load(outputs["logits"])
    assert stats.metadata["resampled"] is True
    for g in (0, 1):  # collected on the input grid
        assert stats.count(g) == np.count_nonzero((case.label_array == g) & case.mask_array)
    metrics = json.loads(Path(outputs["metrics"]).read_text())
    assert metrics["raw"]["lesion"] == pytest.approx(case_metrics(
        array(outputs["prediction"]), array(case.label), spacing_zyx(read_image(case.label)), [1])[1])


# ---------------------------------------------------------------------------- errors


def test_channel_count_error_says_what_the_model_takes(model, tmp_path):
    case = write_case(tmp_path / "in", ".nii.gz")
    with pytest.raises(InputError) as info:
        infer_case(model, case.images[:1], tmp_path / "pred.nii.gz", device="cpu", sink=quiet())
    message = info.value.message
    assert "takes 2 channel(s)" in message and "'t1', 't2'" in message and "1 image(s)" in message
    assert "t1, t2" in info.value.hint
    assert not (tmp_path / "pred.nii.gz").exists()


def test_geometry_mismatch_names_both_files_and_the_field(model, tmp_path):
    case = write_case(tmp_path / "in", ".nii.gz")
    moved = read_image(case.images[1])
    moved.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(moved, case.images[1])
    with pytest.raises(InputError) as info:
        infer_case(model, case.images, tmp_path / "pred.nii.gz", device="cpu", sink=quiet())
    message = info.value.message
    assert "origin" in message and case.images[0] in message and case.images[1] in message


def test_label_with_another_geometry_is_refused(model, tmp_path):
    case = write_case(tmp_path / "in", ".nii.gz")
    label = read_image(case.label)
    label.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(label, case.label)
    with pytest.raises(InputError, match="spacing"):
        infer_case(model, case.images, tmp_path / "pred.nii.gz", label=case.label, device="cpu", sink=quiet())


def test_unreadable_image_is_named(model, tmp_path):
    case = write_case(tmp_path / "in", ".nii.gz")
    Path(case.images[1]).write_bytes(b"this is not an image" * 10)
    with pytest.raises(InputError, match="Cannot read image .*case_0001.nii.gz"):
        infer_case(model, case.images, tmp_path / "pred.nii.gz", device="cpu", sink=quiet())
    with pytest.raises(InputError, match="not found: .*missing.nii.gz"):
        infer_case(model, [case.images[0], str(tmp_path / "missing.nii.gz")], tmp_path / "pred.nii.gz",
                   device="cpu", sink=quiet())


def test_bad_model_files_are_input_errors(tmp_path):
    case = write_case(tmp_path / "in", ".nii.gz")
    with pytest.raises(InputError, match="does not exist"):
        infer_case(tmp_path / "none.pt", case.images, tmp_path / "pred.nii.gz", device="cpu", sink=quiet())
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(InputError, match="not an AsymSeg model"):
        infer_case(other, case.images, tmp_path / "pred.nii.gz", device="cpu", sink=quiet())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(InputError, match="cannot be read"):
        infer_case(truncated, case.images, tmp_path / "pred.nii.gz", device="cpu", sink=quiet())


def test_output_problems_are_reported_before_any_work(model, tmp_path):
    case = write_case(tmp_path / "in", ".nii.gz")
    with pytest.raises(InputError, match="unsupported extension"):
        infer_case(model, case.images, tmp_path / "pred.png", device="cpu", sink=quiet())
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(ResourceError, match="not writable"):
        infer_case(model, case.images, blocker / "pred.nii.gz", device="cpu", sink=quiet())
    with pytest.raises(InputError, match="overlap"):
        infer_case(model, case.images, tmp_path / "pred.nii.gz", overlap=1.0, device="cpu", sink=quiet())


# ---------------------------------------------------------------------------- dataset form, evaluate


def test_dataset_inference_then_evaluate_end_to_end(model, phantom_dataset, tmp_path):
    sink = quiet()
    outputs = infer_dataset(model, phantom_dataset, ["phantom_002", "phantom_003"], tmp_path / "pred",
                            probabilities=True, device="cpu", sink=sink)
    for case in ("phantom_002", "phantom_003"):
        assert Path(outputs[case]).name == f"{case}.nii.gz"
        assert_geometry = read_image(phantom_dataset / "imagesTr" / f"{case}_0000.nii.gz")
        assert read_image(outputs[case]).GetSize() == assert_geometry.GetSize()
    merged = LogitStatistics.load(outputs["logit_statistics"])
    labels = [array(phantom_dataset / "labelsTr" / f"{c}.nii.gz") for c in ("phantom_002", "phantom_003")]
    assert [merged.count(g) for g in (0, 1)] == [sum(np.count_nonzero(l == g) for l in labels) for g in (0, 1)]
    progress = [e for e in sink.events if e["type"] == "progress" and e["phase"] == "infer"]
    assert {(e["iteration"], e["total"], e["case"]) for e in progress} == {(1, 2, "phantom_002"), (2, 2, "phantom_003")}

    sink = quiet()  # two of the dataset's four cases were predicted: evaluated with allow_missing, and said so
    evaluated = evaluate_folder(tmp_path / "pred", phantom_dataset, tmp_path / "eval", sink=sink, allow_missing=True)
    record = json.loads(Path(evaluated["metrics"]).read_text())
    assert sorted(record["cases"]) == ["phantom_002", "phantom_003"]  # *_probabilities files are not cases
    assert record["missing_cases"] == ["phantom_000", "phantom_001"]
    assert [e["message"] for e in sink.events if e["type"] == "warning"] == [
        f"No prediction for case(s) phantom_000, phantom_001 in {tmp_path / 'pred'}: the metrics average over the 2 "
        f"of 4 case(s) that have one."]
    for case in ("phantom_002", "phantom_003"):
        per_case = json.loads(Path(outputs[f"{case}_metrics"]).read_text())
        assert record["cases"][case] == {v: per_case[v] for v in ("raw", "chosen", "post")}
    batch = json.loads(Path(outputs["metrics"]).read_text())  # infer --dataset's own summary agrees
    assert batch["cases"] == record["cases"] and batch["summary"] == record["summary"]
    assert record["summary"]["raw"]["lesion"]["dsc"]["n"] == 2


def test_infer_cases_merges_the_logit_statistics_and_collects_the_metrics(model, phantom_dataset, tmp_path):
    """The helper behind infer --dataset, the demo and bench: counts and means pool exactly, per case metrics."""
    _, specs = read_nnunet_dataset(phantom_dataset)
    by_id = {spec.id: spec for spec in specs}
    predictor = inference.load_predictor(model, "cpu")
    chosen = [by_id["phantom_002"], dataclasses.replace(by_id["phantom_003"], label=None)]  # one without ground truth
    cases = inference.infer_cases(predictor, chosen, tmp_path / "pred", sink=quiet(), metadata={"run": "r1"})
    assert list(cases.outputs) == ["phantom_002", "phantom_003"]
    assert cases.logits.metadata == {"grouped_by": "mixed", "cases": ["phantom_002", "phantom_003"], "run": "r1"}
    label = array(phantom_dataset / "labelsTr" / "phantom_002.nii.gz")
    predicted = array(cases.outputs["phantom_003"]["prediction"])  # no label: grouped by the prediction
    per_case = [LogitStatistics.load(cases.outputs[c]["logits"]) for c in cases.outputs]
    for g in (0, 1):
        assert cases.logits.count(g) == np.count_nonzero(label == g) + np.count_nonzero(predicted == g)
        for c in (0, 1):  # the merged mean is the voxel-weighted mean of the cases' means
            expected = sum(s.count(g) * s.mean(g, c) for s in per_case) / sum(s.count(g) for s in per_case)
            assert cases.logits.mean(g, c) == pytest.approx(expected, rel=1e-9)
    assert list(cases.metrics) == ["phantom_002"]  # metrics only where there is ground truth
    prediction = array(cases.outputs["phantom_002"]["prediction"])
    spacing = spacing_zyx(read_image(phantom_dataset / "labelsTr" / "phantom_002.nii.gz"))
    assert cases.metrics["phantom_002"]["raw"]["lesion"] == pytest.approx(
        case_metrics(prediction, label, spacing, [1])[1])
    assert cases.metrics["phantom_002"]["post"]["lesion"] == pytest.approx(
        case_metrics(keep_largest_component(prediction, [1]), label, spacing, [1])[1])

    labelled = inference.infer_cases(predictor, chosen[:1], tmp_path / "one", sink=quiet())
    assert labelled.logits.metadata == {"grouped_by": "reference", "cases": ["phantom_002"]}
    assert [labelled.logits.count(g) for g in (0, 1)] == [np.count_nonzero(label == g) for g in (0, 1)]
    with pytest.raises(ValueError, match="no logit statistics"):
        inference.infer_cases(predictor, [], tmp_path / "none", sink=quiet())


def test_dataset_inference_on_unlabelled_test_cases(model, phantom_dataset, tmp_path):
    """imagesTs without labelsTs (new cases): predictions and statistics grouped by the prediction, no metrics."""
    data = tmp_path / "data"
    shutil.copytree(phantom_dataset, data)
    (data / "imagesTs").mkdir()
    for f in (data / "imagesTr").glob("phantom_003_*"):
        shutil.copy(f, data / "imagesTs" / f.name.replace("phantom_003", "new_001"))
    outputs = infer_dataset(model, data, [], tmp_path / "pred", device="cpu", sink=quiet(), subset="Ts")
    assert sorted(k for k in outputs if not k.startswith("logit")) == ["new_001", "new_001_logits"]
    stats = json.loads(Path(outputs["logit_statistics"]).read_text())
    assert stats["grouped_by"] == "prediction"
    predicted = array(outputs["new_001"])
    assert [LogitStatistics.load(outputs["logit_statistics"]).count(g) for g in (0, 1)] == \
        [np.count_nonzero(predicted == g) for g in (0, 1)]
    assert not (tmp_path / "pred" / "metrics.json").exists()
    with pytest.raises(InputError, match="No images in .*imagesTs"):
        infer_dataset(model, phantom_dataset, [], tmp_path / "pred2", device="cpu", sink=quiet(), subset="Ts")


# ---------------------------------------------------------------------------- command line


def _run_cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "AsymSegTrainer", "infer", *map(str, args), "--events",
                           "--device", "cpu"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_cli_emits_the_protocol_events(model, tmp_path):
    case = write_case(tmp_path / "in", ".nrrd")
    out = tmp_path / "out" / "prediction.nrrd"
    done = _run_cli("--model", model, "--images", *case.images, "--out", out, "--label", case.label)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]  # every stdout line is an event
    types = [e["type"] for e in events]
    assert types[0] == "start" and types[-1] == "done" and set(types[1:-1]) == {"progress"}
    start = events[0]
    assert start["command"] == "infer" and start["device"] == "cpu" and start["output"] == str(out)
    assert {"asymseg", "torch", "monai", "python"} <= set(start["versions"])
    assert start["config"]["images"] == case.images and start["config"]["channels"] == ["t1", "t2"]
    assert "infer" in {e["phase"] for e in events[1:-1]}
    assert all(isinstance(e["time"], float) for e in events)
    assert events[-1]["status"] == "finished" and events[-1]["exit_code"] == 0
    outputs = events[-1]["outputs"]
    assert set(outputs) == {"prediction", "logits", "metrics"} and all(Path(p).is_file() for p in outputs.values())
    assert_same_geometry(outputs["prediction"], case.images[0])


def test_cli_channel_count_error_exits_3(model, tmp_path):
    case = write_case(tmp_path / "in", ".nii.gz")
    done = _run_cli("--model", model, "--images", case.images[0], "--out", tmp_path / "p.nii.gz")
    assert done.returncode == 3
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["type"] for e in events[-2:]] == ["error", "done"]
    error, last = events[-2:]
    assert error["kind"] == "input" and "takes 2 channel(s)" in error["message"] and error["hint"]
    assert last["status"] == "failed" and last["exit_code"] == 3 and last["outputs"] == {}


def test_a_2d_model_segments_a_volume_slice_by_slice_and_a_2d_image(tmp_path, monkeypatch):
    from AsymSegTrainer.network import build_network, save_model

    torch.manual_seed(0)
    meta = {"class_names": ["background", "lesion"], "classes": {"background": [0], "lesion": [1]},
            "unlisted": "error", "channels": ["t1", "t2"], "normalization": {"mode": "zscore", "window": None},
            "target_spacing": None, "network": TINY, "spatial_dims": 2, "patch_size": [1, 16, 16]}
    model_2d = tmp_path / "model2d.pt"
    save_model(model_2d, build_network(TINY, 2, 2, spatial_dims=2), meta)
    seen = []
    original = inference.predict_logits
    monkeypatch.setattr(inference, "predict_logits",
                        lambda net, image, *a, **k: seen.append(image.shape) or original(net, image, *a, **k))
    case = write_case(tmp_path / "in", ".nii.gz")
    outputs = infer_case(model_2d, case.images, tmp_path / "vol.nii.gz", probabilities=True, device="cpu",
                         sink=quiet())
    assert seen == [(2, 1) + SHAPE[1:]] * SHAPE[0]  # one call per slice
    assert_same_geometry(outputs["prediction"], case.images[0])
    np.testing.assert_array_equal(np.argmax(probabilities(outputs["probabilities"]), 0), array(outputs["prediction"]))

    slice_images = []
    for c, path in enumerate(case.images):
        image = read_image(path)[:, :, 4]  # a 2D image: the fifth slice
        slice_images.append(str(tmp_path / f"slice_{c}.nrrd"))
        sitk.WriteImage(image, slice_images[-1])
    outputs = infer_case(model_2d, slice_images, tmp_path / "slice_pred.nrrd", device="cpu", sink=quiet())
    written, first = read_image(outputs["prediction"]), read_image(slice_images[0])
    assert written.GetDimension() == 2 and written.GetSize() == first.GetSize()
    np.testing.assert_allclose(written.GetOrigin(), first.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(written.GetDirection(), first.GetDirection(), atol=1e-6)
    assert sitk.GetArrayFromImage(written).shape == SHAPE[1:]


@pytest.mark.parametrize("statistics", ["foreground", "mask"])
def test_a_model_trained_with_roi_masks_segments_a_case_alike_with_and_without_its_mask(phantom_dataset, tmp_path,
                                                                                       statistics):
    """Issue 11: a case given as image files alone must be normalised as in training. With the default
    ``foreground`` statistics the ROI mask changes nothing; with ``mask`` statistics it does (so the test can fail)."""
    _, specs = read_nnunet_dataset(phantom_dataset)
    cases = []
    for spec in specs[:2]:
        reference = read_image(spec.images[0])
        box = np.zeros(sitk.GetArrayFromImage(reference).shape, np.uint8)
        box[6:18, 6:18, 6:18] = 1  # an ROI smaller than the body: its statistics differ from the body's
        mask = write_image(box, reference, tmp_path / f"{spec.id}_mask.nii.gz")
        cases.append({"id": spec.id, "images": spec.images, "label": spec.label, "mask": str(mask)})
    job = {"cases": cases, "classes": {"background": [0], "lesion": [1]}, "output": str(tmp_path / "run"),
           "network": TINY, "patch_size": [16, 16, 16], "batch_size": 2, "iterations": 3, "device": "cpu",
           "learning_rate": 1e-2, "logit_statistics": False, "target_spacing": "native",
           "normalization": {"mode": "zscore", "statistics": statistics}}
    trained = Trainer(job_from_dict(job, tmp_path), quiet()).run().model
    case = write_case(tmp_path / "case", ".nii.gz")
    box = np.zeros(SHAPE, np.uint8)
    box[5:15, 8:20, 8:20] = 1
    reference = read_image(case.images[0])
    mask = write_image(box, reference, tmp_path / "case" / "roi.nii.gz")
    with_mask = infer_case(trained, case.images, tmp_path / "with" / "pred.nii.gz", mask=str(mask),
                           probabilities=True, device="cpu", sink=quiet())
    without = infer_case(trained, case.images, tmp_path / "without" / "pred.nii.gz", probabilities=True,
                         device="cpu", sink=quiet())
    same = np.array_equal(array(with_mask["probabilities"]), array(without["probabilities"]))
    assert same == (statistics == "foreground")
