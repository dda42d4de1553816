"""evaluate: per-case metrics with and without largest-component post-processing, summary, Markdown, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from AsymSegTrainer import cli
from AsymSegTrainer.data import read_image, spacing_zyx, write_image
from AsymSegTrainer.errors import InputError
from AsymSegTrainer.evaluation import evaluate_folder, summarize_cases
from AsymSegTrainer.events import EventSink
from AsymSegTrainer.metrics import case_metrics, keep_largest_component, summarize
from AsymSegTrainer.network import build_network, save_model
from AsymSegTrainer.phantoms import make_phantom_dataset

DIRECTION = tuple(sitk.VersorTransform((0.0, 1.0, 1.0), 0.3).GetMatrix())
CASES = ("phantom_000", "phantom_001", "phantom_002")


def quiet() -> EventSink:
    return EventSink(progress_bar=False)


def labels_of(dataset: Path, case: str) -> np.ndarray:
    return sitk.GetArrayFromImage(read_image(dataset / "labelsTr" / f"{case}.nii.gz"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Three phantoms in an oblique, anisotropic geometry (so HD95 must use the physical spacing)."""
    return make_phantom_dataset(tmp_path_factory.mktemp("eval") / "data", num_cases=3, shape=(16, 28, 24),
                                spacing=(2.5, 0.8, 1.0), direction=DIRECTION, origin=(3.0, -4.0, 5.0))


@pytest.fixture
def predictions(dataset, tmp_path) -> Path:
    """phantom_000: truth shifted by one voxel plus a far spurious blob; phantom_001: empty; phantom_002: exact."""
    folder = tmp_path / "pred"
    for case in CASES:
        reference = read_image(dataset / "labelsTr" / f"{case}.nii.gz")
        truth = sitk.GetArrayFromImage(reference)
        if case == "phantom_000":
            prediction = np.roll(truth, 1, axis=2)
            prediction[1:3, 1:3, 1:3] = 1
        elif case == "phantom_001":
            prediction = np.zeros_like(truth)
        else:
            prediction = truth.copy()
        write_image(prediction.astype(np.uint8), reference, folder / f"{case}.nii.gz")
    write_image(np.zeros((2,) + truth.shape, np.float32), reference, folder / "phantom_002_probabilities.nii.gz")
    return folder


def test_metrics_equal_case_metrics_raw_and_post(dataset, predictions, tmp_path):
    outputs = evaluate_folder(predictions, dataset, tmp_path / "eval", sink=quiet())
    assert outputs == {"metrics": str(tmp_path / "eval" / "metrics.json"),
                       "metrics_markdown": str(tmp_path / "eval" / "metrics.md")}
    record = json.loads(Path(outputs["metrics"]).read_text())
    assert record["classes"] == ["background", "lesion"] and sorted(record["cases"]) == list(CASES)
    spacing = spacing_zyx(read_image(dataset / "labelsTr" / "phantom_000.nii.gz"))
    assert spacing == pytest.approx((2.5, 0.8, 1.0))
    for case in CASES:
        prediction = sitk.GetArrayFromImage(read_image(predictions / f"{case}.nii.gz"))
        truth = labels_of(dataset, case)
        assert record["cases"][case]["raw"]["lesion"] == pytest.approx(case_metrics(prediction, truth, spacing, [1])[1])
        assert record["cases"][case]["post"]["lesion"] == pytest.approx(
            case_metrics(keep_largest_component(prediction, [1]), truth, spacing, [1])[1])
        assert record["cases"][case]["chosen"] == record["cases"][case]["raw"]  # no model, no --postprocess: none
    shifted = record["cases"]["phantom_000"]
    assert shifted["post"]["lesion"]["fp"] < shifted["raw"]["lesion"]["fp"]  # the spurious blob is removed
    empty = record["cases"]["phantom_001"]["raw"]["lesion"]
    assert empty["empty_prediction"] and empty["dsc"] == 0.0 and empty["precision"] is None
    assert record["cases"]["phantom_002"]["raw"]["lesion"]["dsc"] == 1.0

    summary = record["summary"]
    assert summary == summarize_cases(record["cases"])
    assert summary["raw"]["lesion"]["dsc"] == summarize(record["cases"][c]["raw"]["lesion"]["dsc"] for c in CASES)
    assert summary["raw"]["lesion"]["precision"]["n_undefined"] == 1  # the empty prediction is counted, not NaN
    keys = {"dsc", "sensitivity", "precision", "specificity", "hd95", "lesions_reference", "lesions_detected",
            "lesions_predicted", "lesions_false_positive", "lesion_sensitivity"}
    assert set(summary["post"]["lesion"]) == keys | {f"{size}_{key}" for size in ("small", "medium", "large")
                                                     for key in keys if "lesion" in key}
    assert record["postprocessing"] == {"lesion": "none"}


def test_markdown_has_a_raw_and_a_post_processed_table(dataset, predictions, tmp_path):
    text = Path(evaluate_folder(predictions, dataset, tmp_path / "eval", sink=quiet())["metrics_markdown"]).read_text()
    raw, rest = text.split("## Chosen post-processing per class (chosen)\n\nlesion: none (the network's output).")
    chosen, post = rest.split("## Largest connected component")
    assert raw.startswith("## Without post-processing")
    for table in (raw, chosen, post):
        assert all(f"| {case} | lesion |" in table for case in CASES)
        assert "| mean ± std | lesion |" in table and "(n=2/3)" in table  # precision undefined for one case
        assert "| total | lesion |" in table and "| lesion | small (< 10 mm³) |" in table
    assert "| phantom_002 | lesion | 100.0 | 100.0 | 100.0 |" in raw


def test_class_map_from_the_cli_strings_or_the_model(dataset, predictions, tmp_path):
    by_strings = json.loads(Path(evaluate_folder(predictions, dataset, tmp_path / "a", classes=["lesion=1"],
                                                 sink=quiet())["metrics"]).read_text())
    model = tmp_path / "model.pt"
    meta = {"classes": {"background": [0], "tumour": [1]}, "unlisted": "error", "class_names": ["background", "tumour"]}
    save_model(model, build_network({"name": "unet", "channels": [4, 8], "strides": [2], "num_res_units": 1}, 2, 2),
               meta)
    by_model = json.loads(Path(evaluate_folder(predictions, dataset, tmp_path / "b", model=model,
                                               cases=["phantom_002"], sink=quiet())["metrics"]).read_text())
    assert list(by_model["cases"]) == ["phantom_002"] and by_model["classes"] == ["background", "tumour"]
    assert by_model["cases"]["phantom_002"]["raw"]["tumour"] == by_strings["cases"]["phantom_002"]["raw"]["lesion"]
    with pytest.raises(InputError, match="not both"):
        evaluate_folder(predictions, dataset, tmp_path / "c", classes=["lesion=1"], model=model, sink=quiet())


def test_missing_and_mismatched_predictions_are_input_errors(dataset, predictions, tmp_path):
    (predictions / "phantom_002.nii.gz").unlink()
    with pytest.raises(InputError, match="No prediction for case.*phantom_002"):
        evaluate_folder(predictions, dataset, tmp_path / "e", cases=["phantom_002"], sink=quiet())
    with pytest.raises(InputError, match="not in"):
        evaluate_folder(predictions, dataset, tmp_path / "e", cases=["nobody"], sink=quiet())
    moved = read_image(predictions / "phantom_000.nii.gz")
    moved.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(moved, str(predictions / "phantom_000.nii.gz"))
    with pytest.raises(InputError, match="Geometry mismatch: origin.*phantom_000"):
        evaluate_folder(predictions, dataset, tmp_path / "e", cases=["phantom_000"], sink=quiet())
    reference = read_image(dataset / "labelsTr" / "phantom_001.nii.gz")
    write_image(np.full(sitk.GetArrayFromImage(reference).shape, 3, np.uint8), reference,
                predictions / "phantom_001.nii.gz")
    with pytest.raises(InputError, match=r"values \[3\] outside the class indices 0..1"):
        evaluate_folder(predictions, dataset, tmp_path / "e", cases=["phantom_001"], sink=quiet())
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="named after a case"):
        evaluate_folder(empty, dataset, tmp_path / "e", sink=quiet())


def test_cli_exit_codes(dataset, predictions, tmp_path, capsys):
    assert cli.main(["evaluate", "--predictions", str(predictions), "--dataset", str(dataset),
                     "--out", str(tmp_path / "ok")]) == 0
    assert (tmp_path / "ok" / "metrics.json").is_file() and (tmp_path / "ok" / "events.jsonl").is_file()
    assert cli.main(["evaluate", "--predictions", str(predictions), "--dataset", str(dataset),
                     "--out", str(tmp_path / "bad"), "--cases", "nobody"]) == 3
    events = [json.loads(line) for line in (tmp_path / "bad" / "events.jsonl").read_text().splitlines()]
    assert [e["type"] for e in events[-2:]] == ["error", "done"] and events[-1]["exit_code"] == 3
