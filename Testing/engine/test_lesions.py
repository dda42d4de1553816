"""Lesion-wise metrics: counts on a hand-built case (bridging and stray components), size bins, summaries, evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from AsymSegTrainer.evaluation import evaluate_folder
from AsymSegTrainer.events import EventSink
from AsymSegTrainer.metrics import (LESION_PREFIXES, case_metrics, component_volumes, connected_components,
                                    lesion_metrics, lesion_size_labels, summarize_metrics)

SPACING = (2.0, 1.0, 1.0)  # (z, y, x) mm: a voxel is 2 mm³
SHAPE = (12, 24, 24)


def known_case():
    """Reference and prediction with known lesions (class 1 unless said otherwise).

    Reference lesions of class 1 (volume, bin):
      A 2 voxels (4 mm³, small)      found by P1, which overlaps one voxel of it
      B 18 voxels (36 mm³, medium)   missed: P6 touches it at a corner only, overlapping nothing
      C 64 + 1 voxels (130 mm³, large; the extra voxel touches the block at a corner: one lesion)  found by P2
      D 10 voxels (20 mm³, medium)   missed: only class 2 is predicted on it
      E, F 1 voxel each (2 mm³, small), one voxel apart: both found by P3, one component bridging them
    Predicted components of class 1: P1 3 voxels (6 mm³), P2 64 (128 mm³), P3 3 (6 mm³), and three that overlap
    no reference voxel: P4 1 voxel (2 mm³), P5 12 voxels (24 mm³), P6 1 voxel (2 mm³).
    Class 2: reference G (1 voxel, missed); predicted: 2 voxels on D (a class-1 lesion), a false positive.
    """
    reference, prediction = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
    reference[1, 1, 1:3] = 1                      # A
    prediction[1, 1, 2:5] = 1                     # P1
    reference[1:3, 8:11, 8:11] = 1                # B
    prediction[3, 11, 11] = 1                     # P6, corner neighbour of B's (2, 10, 10)
    reference[5:9, 2:6, 2:6] = 1                  # C
    reference[9, 6, 6] = 1                        # C, corner neighbour of (8, 5, 5)
    prediction[5:9, 2:6, 2:6] = 1                 # P2
    reference[5, 14:16, 14:19] = 1                # D
    prediction[5, 14, 14:16] = 2                  # class 2 on D
    reference[10, 20, 2] = reference[10, 20, 4] = 1   # E, F
    prediction[10, 20, 2:5] = 1                   # P3 bridges E and F
    prediction[10, 2, 20] = 1                     # P4
    prediction[1:3, 18:21, 18:20] = 1             # P5
    reference[10, 10, 20] = 2                     # G
    return reference, prediction


EXPECTED_CLASS_1 = {
    "lesions_reference": 6, "lesions_detected": 4, "lesions_predicted": 6, "lesions_false_positive": 3,
    "lesion_sensitivity": 4 / 6,
    "small_lesions_reference": 3, "small_lesions_detected": 3, "small_lesions_predicted": 4,
    "small_lesions_false_positive": 2, "small_lesion_sensitivity": 1.0,
    "medium_lesions_reference": 2, "medium_lesions_detected": 0, "medium_lesions_predicted": 1,
    "medium_lesions_false_positive": 1, "medium_lesion_sensitivity": 0.0,
    "large_lesions_reference": 1, "large_lesions_detected": 1, "large_lesions_predicted": 1,
    "large_lesions_false_positive": 0, "large_lesion_sensitivity": 1.0,
}
EXPECTED_CLASS_2 = {
    "lesions_reference": 1, "lesions_detected": 0, "lesions_predicted": 1, "lesions_false_positive": 1,
    "lesion_sensitivity": 0.0,
    "small_lesions_reference": 1, "small_lesions_detected": 0, "small_lesions_predicted": 1,
    "small_lesions_false_positive": 1, "small_lesion_sensitivity": 0.0,
    "medium_lesions_reference": 0, "medium_lesions_detected": 0, "medium_lesions_predicted": 0,
    "medium_lesions_false_positive": 0, "medium_lesion_sensitivity": None,
    "large_lesions_reference": 0, "large_lesions_detected": 0, "large_lesions_predicted": 0,
    "large_lesions_false_positive": 0, "large_lesion_sensitivity": None,
}


def lesion_part(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if "lesion" in k}


def test_counts_of_the_known_case():
    reference, prediction = known_case()
    m = case_metrics(prediction, reference, SPACING)
    assert lesion_part(m[1]) == pytest.approx(EXPECTED_CLASS_1)
    assert lesion_part(m[2]) == EXPECTED_CLASS_2
    assert lesion_metrics(prediction == 1, reference == 1, SPACING) == pytest.approx(EXPECTED_CLASS_1)


def test_bridge_detects_both_lesions_and_one_lesion_split_in_two_is_found_once():
    reference, prediction = np.zeros((1, 3, 9), bool), np.zeros((1, 3, 9), bool)
    reference[0, 1, 1] = reference[0, 1, 3] = True    # two lesions
    prediction[0, 1, 1:4] = True                       # one component over both
    reference[0, 1, 6:9] = True                        # one lesion ...
    prediction[0, 1, 6] = prediction[0, 1, 8] = True   # ... hit by two components
    m = lesion_metrics(prediction, reference, (1.0, 1.0, 1.0))
    assert (m["lesions_reference"], m["lesions_detected"]) == (3, 3)
    assert (m["lesions_predicted"], m["lesions_false_positive"]) == (3, 0)


def test_empty_masks():
    empty = np.zeros((3, 4, 4), bool)
    m = lesion_metrics(empty, empty, (1, 1, 1))
    assert all(m[p + "lesions_reference"] == m[p + "lesions_predicted"] == 0 for p in LESION_PREFIXES)
    assert all(m[p + "lesion_sensitivity"] is None for p in LESION_PREFIXES)
    full = empty.copy()
    full[1, 1, 1] = True
    assert lesion_metrics(full, empty, (1, 1, 1))["lesions_false_positive"] == 1
    assert lesion_metrics(empty, full, (1, 1, 1))["lesion_sensitivity"] == 0.0


def test_size_bins_by_volume_in_mm3():
    assert lesion_size_labels() == {"small": "small (< 10 mm³)", "medium": "medium (10–100 mm³)",
                                    "large": "large (≥ 100 mm³)"}
    ref = np.zeros((1, 3, 120), bool)
    ref[0, 0, 0:4] = True        # 4 voxels x 2.5 mm³ = 10 mm³: medium (the bound belongs to the upper bin)
    ref[0, 2, 0:3] = True        # 7.5 mm³: small
    ref[0, 0, 10:50] = True      # 100 mm³: large
    ref[0, 2, 10:49] = True      # 97.5 mm³: medium
    m = lesion_metrics(np.zeros_like(ref), ref, (2.5, 1.0, 1.0))
    assert [m[f"{b}_lesions_reference"] for b in ("small", "medium", "large")] == [1, 2, 1]
    # 250 voxels of 0.1 x 0.1 x 1.2 mm are 3 mm³, which float arithmetic makes 3.0000000000000004
    components, count = connected_components(np.ones((1, 10, 25), bool))
    assert component_volumes(components, count, (0.1, 0.1, 1.2)).tolist() == [0.0, 3.0]


def test_summary_adds_lesions_over_cases_and_averages_per_case():
    reference, prediction = known_case()
    known = case_metrics(prediction, reference, SPACING, [1])[1]
    perfect = case_metrics(reference, reference, SPACING, [1])[1]   # 6 of 6 found, no false positive
    old = {"dsc": 0.5}                                              # a result from before lesion metrics
    s = summarize_metrics([known, perfect, old])
    assert s["dsc"]["n"] == 3 and s["lesions_detected"]["n_undefined"] == 1
    assert (s["lesions_reference"]["total"], s["lesions_detected"]["total"]) == (12, 10)
    assert s["lesions_false_positive"]["total"] == 3 and s["lesions_false_positive"]["mean"] == 1.5
    assert s["lesion_sensitivity"]["pooled"] == pytest.approx(10 / 12)       # every lesion once
    assert s["lesion_sensitivity"]["mean"] == pytest.approx((4 / 6 + 1) / 2)  # every case once
    assert s["medium_lesion_sensitivity"]["pooled"] == pytest.approx(2 / 4)
    assert s["medium_lesion_sensitivity"]["mean"] == pytest.approx(0.5)
    none = summarize_metrics([old])
    assert none["lesions_detected"]["total"] is None and none["lesion_sensitivity"]["pooled"] is None


def write_dataset(folder: Path, cases: dict) -> Path:
    """An nnU-Net raw folder of one-channel cases: id -> (reference, prediction); predictions in folder/pred."""
    geometry = sitk.Image(list(reversed(SHAPE)), sitk.sitkUInt8)
    geometry.SetSpacing(tuple(reversed(SPACING)))
    for name in ("imagesTr", "labelsTr", "pred"):
        (folder / name).mkdir(parents=True)
    for case, (reference, prediction) in cases.items():
        for array, path in ((reference.astype(np.float32), f"imagesTr/{case}_0000.nii.gz"),
                            (reference, f"labelsTr/{case}.nii.gz"), (prediction, f"pred/{case}.nii.gz")):
            image = sitk.GetImageFromArray(array)
            image.CopyInformation(geometry)
            sitk.WriteImage(image, str(folder / path))
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "t1"}, "labels": {"background": 0, "lesion": 1, "other": 2},
        "numTraining": len(cases), "file_ending": ".nii.gz"}))
    return folder


def test_evaluate_reports_exactly_these_counts(tmp_path):
    reference, prediction = known_case()
    data = write_dataset(tmp_path / "data", {"known": (reference, prediction), "perfect": (reference, reference)})
    outputs = evaluate_folder(data / "pred", data, tmp_path / "eval", sink=EventSink(progress_bar=False))
    record = json.loads(Path(outputs["metrics"]).read_text())
    known = record["cases"]["known"]
    for variant in ("raw", "chosen"):  # chosen: no model, no --postprocess: none
        assert lesion_part(known[variant]["lesion"]) == pytest.approx(EXPECTED_CLASS_1)
        assert lesion_part(known[variant]["other"]) == EXPECTED_CLASS_2
    largest = known["post"]["lesion"]  # P2 alone is left: C found, nothing false
    assert (largest["lesions_detected"], largest["lesions_predicted"], largest["lesions_false_positive"]) == (1, 1, 0)
    assert record["postprocessing"] == {"lesion": "none", "other": "none"}
    summary = record["summary"]["raw"]["lesion"]
    assert (summary["lesions_detected"]["total"], summary["lesions_reference"]["total"]) == (10, 12)
    assert summary["lesion_sensitivity"]["pooled"] == pytest.approx(10 / 12)
    assert summary["small_lesions_false_positive"]["total"] == 2
    text = Path(outputs["metrics_markdown"]).read_text()
    assert "| known | lesion | " in text and " | 4/6 | 2 | 3 | 66.7 |" in text
    assert "| total | lesion |  |  |  |  |  | 10/12 | 2 | 3 | 83.3 |" in text
    assert "| lesion | medium (10–100 mm³) | 2/4 | 2 | 1 | 50.0 |" in text
    assert "| other | small (< 10 mm³) | 1/2 | 1 | 1 | 50.0 |" in text

    min_size = json.loads(Path(evaluate_folder(data / "pred", data, tmp_path / "eval5", postprocess="min-size=5",
                                               sink=EventSink(progress_bar=False))["metrics"]).read_text())
    chosen = min_size["cases"]["known"]["chosen"]["lesion"]  # P4 and P6 (2 mm³) go; P1 and P3 (6 mm³) stay
    assert (chosen["lesions_detected"], chosen["lesions_false_positive"]) == (4, 1)
    assert min_size["postprocessing"] == {"lesion": "min-size=5", "other": "min-size=5"}
    assert min_size["cases"]["known"]["raw"] == known["raw"]
