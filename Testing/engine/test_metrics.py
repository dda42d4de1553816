"""Tests of AsymSegTrainer.metrics against hand-computed values and a brute-force HD95."""

import json

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from AsymSegTrainer.metrics import case_metrics, keep_largest_component, metrics_table_markdown, summarize

# 4x4 maps; class 1: reference 4 voxels, prediction 3, overlap 2 -> TP 2, FP 1, FN 2, TN 11.
# class 2: reference 2 voxels, prediction 2, overlap 1 -> TP 1, FP 1, FN 1, TN 13.
REFERENCE = np.array([[1, 1, 0, 0],
                      [1, 1, 0, 0],
                      [0, 0, 0, 2],
                      [0, 0, 0, 2]])
PREDICTION = np.array([[1, 1, 0, 0],
                       [0, 0, 1, 0],
                       [0, 0, 2, 2],
                       [0, 0, 0, 0]])


def surface(mask):
    """Foreground voxels with a face neighbour outside the mask (outside the image counts as outside)."""
    padded = np.pad(mask, 1)
    inner = np.ones_like(mask)
    for axis in range(mask.ndim):
        for shift in (0, 2):
            index = [slice(1, -1)] * mask.ndim
            index[axis] = slice(shift, shift + mask.shape[axis])
            inner &= padded[tuple(index)]
    return mask & ~inner


def brute_force_hd95(pred, ref, spacing):
    """Max of the two directed 95th percentiles of nearest surface-to-surface distances in mm."""
    p, r = (np.argwhere(surface(m)) * np.asarray(spacing) for m in (pred, ref))
    d = cdist(p, r)
    return max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95))


def test_hand_computed_counts_and_ratios():
    m = case_metrics(PREDICTION, REFERENCE, spacing=(1.0, 1.0))
    assert set(m) == {1, 2}
    c1, c2 = m[1], m[2]
    assert (c1["tp"], c1["fp"], c1["fn"], c1["tn"]) == (2, 1, 2, 11)
    assert (c1["reference_voxels"], c1["predicted_voxels"]) == (4, 3)
    assert c1["dsc"] == pytest.approx(4 / 7)
    assert c1["sensitivity"] == pytest.approx(0.5)
    assert c1["precision"] == pytest.approx(2 / 3)
    assert c1["specificity"] == pytest.approx(11 / 12)
    assert (c2["tp"], c2["fp"], c2["fn"], c2["tn"]) == (1, 1, 1, 13)
    assert (c2["dsc"], c2["sensitivity"], c2["precision"]) == (0.5, 0.5, 0.5)
    assert c2["specificity"] == pytest.approx(13 / 14)
    assert not c1["empty_reference"] and not c1["empty_prediction"]


def test_results_are_plain_python_and_json_serialisable():
    m = case_metrics(PREDICTION, REFERENCE, spacing=[1, 1])
    for c, d in m.items():
        assert type(c) is int
        for key, value in d.items():
            assert type(value) in (int, float, bool, type(None)), (key, type(value))
    assert json.loads(json.dumps(m))["1"]["tp"] == 2


@pytest.mark.parametrize("offset_axis, spacing, expected", [
    (0, (3.0, 1.0, 1.0), 3.0),
    (1, (3.0, 1.0, 1.0), 1.0),
    (1, (1.0, 3.0, 1.0), 3.0),
    (2, (0.5, 0.7, 2.5), 2.5),
])
def test_hd95_uses_physical_spacing(offset_axis, spacing, expected):
    pred, ref = np.zeros((4, 4, 4), int), np.zeros((4, 4, 4), int)
    pred[1, 1, 1] = 1
    ref[tuple(2 if axis == offset_axis else 1 for axis in range(3))] = 1
    assert case_metrics(pred, ref, spacing)[1]["hd95"] == pytest.approx(expected)


@pytest.mark.parametrize("seed, shape, spacing", [
    (0, (14, 12, 10), (2.5, 0.8, 1.3)),
    (1, (14, 12, 10), (1.0, 1.0, 3.0)),
    (2, (30, 25), (0.6, 1.7)),
])
def test_hd95_matches_brute_force(seed, shape, spacing):
    rng = np.random.default_rng(seed)
    # Smoothed noise gives blobby, multi-component masks that also touch the image border.
    pred = ndimage.gaussian_filter(rng.normal(size=shape), 1.5) > 0.05
    ref = ndimage.gaussian_filter(rng.normal(size=shape), 1.5) > 0.05
    expected = brute_force_hd95(pred, ref, spacing)
    assert expected > 0
    hd95 = case_metrics(pred.astype(np.int16), ref.astype(np.int16), spacing)[1]["hd95"]
    assert hd95 == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_identical_masks_give_perfect_scores():
    m = case_metrics(REFERENCE, REFERENCE, (1, 1))[1]
    assert (m["dsc"], m["sensitivity"], m["precision"], m["specificity"], m["hd95"]) == (1.0, 1.0, 1.0, 1.0, 0.0)


@pytest.mark.parametrize("pred_has, ref_has, expected", [
    (False, False, {"dsc": 1.0, "sensitivity": None, "precision": None, "hd95": 0.0}),
    (True, False, {"dsc": 0.0, "sensitivity": None, "precision": 0.0, "hd95": None}),
    (False, True, {"dsc": 0.0, "sensitivity": 0.0, "precision": None, "hd95": None}),
])
def test_empty_conventions(pred_has, ref_has, expected):
    pred, ref = np.zeros((5, 5), np.uint8), np.zeros((5, 5), np.uint8)
    pred[1:3, 1:3] = pred_has
    ref[2:4, 2:4] = ref_has
    m = case_metrics(pred, ref, (1, 1), classes=[1])[1]
    assert {k: m[k] for k in expected} == expected
    assert m["empty_prediction"] is (not pred_has) and m["empty_reference"] is (not ref_has)
    assert m["specificity"] == pytest.approx((25 - 4 * pred_has - 4 * ref_has) / (25 - 4 * ref_has))


def test_default_classes_span_one_to_max_and_absent_class_is_both_empty():
    pred = np.array([[0, 1], [3, 0]])
    ref = np.array([[0, 1], [0, 0]])
    m = case_metrics(pred, ref, (1, 1))
    assert sorted(m) == [1, 2, 3]
    assert m[2]["empty_reference"] and m[2]["empty_prediction"] and m[2]["dsc"] == 1.0
    assert m[3]["empty_reference"] and not m[3]["empty_prediction"] and m[3]["precision"] == 0.0
    assert list(case_metrics(np.zeros((2, 2), int), np.zeros((2, 2), int), (1, 1))) == []


def test_specificity_undefined_when_class_fills_the_image():
    full = np.ones((3, 3), int)
    m = case_metrics(full, full, (1, 1))[1]
    assert m["specificity"] is None and m["dsc"] == 1.0


def test_keep_largest_component_per_class_independently():
    labels = np.zeros((5, 6, 6), np.int64)
    labels[0, 0, 0:3] = 1           # class 1: 3 voxels (kept)
    labels[4, 5, 5] = 1             # class 1: 1 voxel (removed)
    labels[2, 2, 2] = 2             # class 2: corner-touching pair = one component of 2 (kept,
    labels[3, 3, 3] = 2             # only with 26-connectivity)
    labels[0, 5, 5] = 2             # class 2: 1 voxel (removed)
    labels[4, 0, 0:5] = 3           # class 3: one component, untouched even though larger than all
    original = labels.copy()
    out = keep_largest_component(labels)
    np.testing.assert_array_equal(labels, original)
    expected = original.copy()
    expected[4, 5, 5] = expected[0, 5, 5] = 0
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == labels.dtype and out is not labels


def test_keep_largest_component_classes_argument_and_2d_ties():
    labels = np.array([[1, 0, 0, 1],
                       [0, 1, 0, 0],
                       [2, 0, 0, 1],
                       [0, 0, 0, 2]])
    # class 1: a diagonal pair (one component only with 8-connectivity) and two single pixels.
    out = keep_largest_component(labels, classes=[1])
    expected = labels.copy()
    expected[0, 3] = expected[2, 3] = 0
    np.testing.assert_array_equal(out, expected)  # class 2 untouched: not listed
    tie = keep_largest_component(labels, classes=[2])
    expected = labels.copy()
    expected[3, 3] = 0  # equal sizes: the component met first in row-major order is kept
    np.testing.assert_array_equal(tie, expected)


def test_summarize_skips_and_counts_undefined():
    s = summarize([0.2, None, 0.6, None, 0.7])
    assert s["n"] == 3 and s["n_undefined"] == 2
    assert s["mean"] == pytest.approx(0.5)
    assert s["std"] == pytest.approx(np.std([0.2, 0.6, 0.7]))  # population std, ddof=0
    assert summarize(x for x in [None, None]) == {"mean": None, "std": None, "n": 0, "n_undefined": 2}
    assert summarize([np.float32(2.0)]) == {"mean": 2.0, "std": 0.0, "n": 1, "n_undefined": 0}
    with pytest.raises(ValueError, match="values.*None"):
        summarize([1.0, float("nan")])


def test_markdown_table_contains_expected_numbers():
    empty = np.zeros_like(REFERENCE)
    per_case = {"case A": case_metrics(PREDICTION, REFERENCE, (1, 1)),
                "case B": case_metrics(REFERENCE, REFERENCE, (1, 1))}
    per_case["case C"] = case_metrics(empty, np.where(REFERENCE == 1, 1, 0), (1, 1), classes=[1])
    table = metrics_table_markdown(per_case, {1: "tumour core", 2: "oedema"})
    lines = table.splitlines()
    assert lines[0] == ("| Case | Class | DSC (%) | SEN (%) | PRC (%) | SPEC (%) | HD95 (mm) | Lesions found | "
                        "Lesions missed | FP lesions | Lesion SEN (%) |")
    hd_a = per_case["case A"][1]["hd95"]
    # class 1 of case A: one reference lesion, one predicted component (8-connected) overlapping it
    assert f"| case A | tumour core | 57.1 | 50.0 | 66.7 | 91.7 | {hd_a:.2f} | 1/1 | 0 | 0 | 100.0 |" in lines
    assert "| case C | tumour core | 0.0 | 0.0 | – | 100.0 | – | 0/1 | 1 | 0 | 0.0 |" in lines
    dsc = np.array([4 / 7, 1, 0]) * 100
    prc = np.array([2 / 3, 1]) * 100
    summary = next(line for line in lines if line.startswith("| mean ± std | tumour core |"))
    assert f"| {dsc.mean():.1f} ± {dsc.std():.1f} |" in summary
    assert f"| {prc.mean():.1f} ± {prc.std():.1f} (n=2/3) |" in summary
    assert f"| {np.mean([hd_a, 0.0]):.2f} ± {np.std([hd_a, 0.0]):.2f} (n=2/3) |" in summary
    assert "| mean ± std | oedema | 75.0 ± 25.0 |" in table
    # lesions found 1, 1, 0 (mean 0.67, std 0.47), missed 0, 0, 1, no false positive, lesion SEN 100, 100, 0 %
    assert summary.endswith("| 0.67 ± 0.47 | 0.33 ± 0.47 | 0.00 ± 0.00 | 66.7 ± 47.1 |")
    assert "| total | tumour core |  |  |  |  |  | 2/3 | 1 | 0 | 66.7 |" in lines  # every lesion once
    assert "| total | oedema |  |  |  |  |  | 2/2 | 0 | 0 | 100.0 |" in lines
    assert len(lines) == 2 + 5 + 2 + 2


@pytest.mark.parametrize("call, argument", [
    (lambda: case_metrics(np.zeros((3, 3), int), np.zeros((3, 4), int), (1, 1)), "reference"),
    (lambda: case_metrics(np.zeros((3, 3), int), np.zeros((3, 3), int), (1, 1, 1)), "spacing"),
    (lambda: case_metrics(np.zeros((3, 3), int), np.zeros((3, 3), int), (1, 0)), "spacing"),
    (lambda: case_metrics(np.zeros((3, 3)), np.zeros((3, 3), int), (1, 1)), "prediction"),
    (lambda: case_metrics(np.zeros((3, 3), int), -np.ones((3, 3), int), (1, 1)), "reference"),
    (lambda: case_metrics(np.zeros((3, 3), int), np.zeros((3, 3), int), (1, 1), classes=[0]), "classes"),
    (lambda: case_metrics(np.zeros(3, int), np.zeros(3, int), (1,)), "prediction"),
    (lambda: keep_largest_component(np.zeros((3, 3), np.float32)), "labels"),
    (lambda: metrics_table_markdown({"a": {1: {"dsc": 1.0}}}, {}), "per_case"),
])
def test_bad_input_raises_value_error_naming_argument(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()
