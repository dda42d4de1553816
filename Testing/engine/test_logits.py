"""Tests of AsymSegTrainer.logits: per-class logit histograms and moments, the paper's dz, true-class margins
(crossing rate) and class volumes."""

import json
import math
import time
import tracemalloc

import numpy as np
import pytest
import torch

from AsymSegTrainer import logits as logits_module
from AsymSegTrainer.logits import DEFAULT_BIN_EDGES, LogitStatistics, logit_shift, margin_shift

EDGES = [-2.0, -1.0, 0.0, 1.0, 2.0]
# Tiny case: spatial (2, 3), two channels. Class 0 at (0,0), (0,1), (1,2); class 1 at the rest.
TINY_LABELS = np.array([[0, 0, 1], [1, 1, 0]])
TINY_LOGITS = np.array([[[-1.5, 0.5, 1.0], [2.0, -3.0, -0.5]],
                        [[0.0, 1.5, -1.0], [0.25, 3.0, 1.0]]], dtype=np.float32)


def tiny_stats(mask=None):
    stats = LogitStatistics(["bg", "fg", "edema"], ["bg", "fg"], EDGES)
    stats.update(TINY_LOGITS, TINY_LABELS, mask)
    return stats


def random_case(rng, shape, num_classes=3, num_channels=3):
    labels = rng.integers(0, num_classes, size=shape)
    logits = rng.normal(size=(num_channels,) + shape) * 9.0 + labels * 2.0  # some values beyond +-20
    return logits.astype(np.float32), labels


def numpy_reference(cases, g, c):
    """Values of channel c over class g in the concatenation of the cases, as float64."""
    return np.concatenate([z[c][y == g] for z, y in cases]).astype(np.float64)


def test_hand_computed_tiny_volume():
    stats = tiny_stats()
    assert [stats.count(g) for g in range(3)] == [3, 3, 0]
    # Class 0, channel 0: -1.5, 0.5, -0.5. Channel 1: 0.0, 1.5, 1.0 (1.0 opens bin [1, 2]).
    assert stats.histogram(0, 0)[1].tolist() == [1, 1, 1, 0]
    assert stats.histogram("bg", "fg")[1].tolist() == [0, 0, 1, 2]
    assert stats.mean(0, 0) == pytest.approx(-0.5, abs=1e-15)
    assert stats.std(0, 0) == pytest.approx(math.sqrt(2 / 3), rel=1e-14)
    assert stats.mean(0, 1) == pytest.approx(2.5 / 3, rel=1e-14)
    assert stats.std(0, 1) == pytest.approx(math.sqrt(7 / 18), rel=1e-14)
    # Class 1, channel 0: 1.0, 2.0 (the last edge belongs to the last bin), -3.0 (underflow).
    edges, counts = stats.histogram(1, 0)
    assert edges.tolist() == EDGES and counts.tolist() == [0, 0, 0, 2]
    assert (stats.underflow(1, 0), stats.overflow(1, 0)) == (1, 0)
    assert stats.mean(1, 0) == pytest.approx(0.0, abs=1e-15)
    assert stats.std(1, 0) == pytest.approx(math.sqrt(14 / 3), rel=1e-14)
    assert (stats.minimum(1, 0), stats.maximum(1, 0)) == (-3.0, 2.0)
    # Class 1, channel 1: -1.0, 0.25, 3.0 (overflow).
    assert stats.histogram(1, 1)[1].tolist() == [0, 1, 1, 0]
    assert (stats.underflow(1, 1), stats.overflow(1, 1)) == (0, 1)
    assert stats.mean(1, 1) == pytest.approx(0.75, rel=1e-14)
    assert stats.std(1, 1) == pytest.approx(math.sqrt(8.375 / 3), rel=1e-14)
    # A class without voxels has no moments and a None summary.
    assert stats.mean("edema", 0) is None and stats.std(2, 1) is None and stats.quantile(2, 0, 0.5) is None
    summary = stats.summary()
    assert summary["edema"] is None
    fg_bg = summary["fg"]["bg"]
    assert (fg_bg["count"], fg_bg["min"], fg_bg["max"]) == (3, -3.0, 2.0)
    assert fg_bg["std"] == pytest.approx(math.sqrt(14 / 3), rel=1e-14)
    assert list(fg_bg["quantiles"]) == ["5", "25", "50", "75", "95"]


def test_mask_excludes_voxels():
    mask = np.ones((2, 3), bool)
    mask[0, 0] = mask[1, 1] = False  # drops -1.5 from class 0 and -3.0 / 3.0 from class 1
    stats = tiny_stats(mask)
    assert [stats.count(g) for g in range(3)] == [2, 2, 0]
    assert stats.histogram(0, 0)[1].tolist() == [0, 1, 1, 0]
    assert (stats.mean(0, 0), stats.std(0, 0)) == (0.0, 0.5)
    assert (stats.mean(1, 0), stats.std(1, 0)) == (1.5, 0.5)
    assert stats.underflow(1, 0) == 0 and stats.overflow(1, 1) == 0
    assert stats.minimum(1, 1) == -1.0 and stats.maximum(1, 1) == 0.25


def test_streaming_over_volumes_and_chunks_equals_one_pass_over_the_concatenation(monkeypatch):
    monkeypatch.setattr(logits_module, "_CHUNK", 50)  # many chunks per volume as well
    rng = np.random.default_rng(0)
    cases = [random_case(rng, shape) for shape in [(7, 11, 5), (13, 4, 9), (6, 6, 6)]]
    stats = LogitStatistics(["bg", "a", "b"])
    for z, y in cases:
        stats.update(z, y)
    out_of_range = 0
    for g in range(3):
        for c in range(3):
            v = numpy_reference(cases, g, c)
            assert stats.count(g) == v.size
            assert np.array_equal(stats.histogram(g, c)[1], np.histogram(v, DEFAULT_BIN_EDGES)[0])
            assert stats.underflow(g, c) == np.sum(v < -20) and stats.overflow(g, c) == np.sum(v > 20)
            assert stats.mean(g, c) == pytest.approx(v.mean(), rel=1e-9)
            assert stats.std(g, c) == pytest.approx(v.std(), rel=1e-9)
            assert (stats.minimum(g, c), stats.maximum(g, c)) == (v.min(), v.max())
            out_of_range += stats.underflow(g, c) + stats.overflow(g, c)
    assert out_of_range > 0  # the data exercise the under/overflow counters


def test_merge_equals_sequential_update():
    rng = np.random.default_rng(1)
    cases = [random_case(rng, (9, 8, 7)) for _ in range(3)]
    sequential, first, second = (LogitStatistics(["bg", "a", "b"]) for _ in range(3))
    for z, y in cases:
        sequential.update(z, y)
    for z, y in cases[:2]:
        first.update(z, y)
    second.update(*cases[2])
    merged, expected = first.merge(second).to_dict(), sequential.to_dict()
    for key in ("count", "histogram", "underflow", "overflow", "min", "max"):
        assert merged[key] == expected[key], key
    for key in ("mean", "m2"):
        np.testing.assert_allclose(merged[key], expected[key], rtol=1e-12)


def test_quantile_within_one_bin_width_of_numpy():
    rng = np.random.default_rng(2)
    z = (rng.normal(size=(2, 20000)) * 4.0).astype(np.float32)
    y = rng.integers(0, 2, size=20000)
    stats = LogitStatistics(["bg", "fg"])
    stats.update(z, y)
    width = DEFAULT_BIN_EDGES[1] - DEFAULT_BIN_EDGES[0]
    v = z[1][y == 1].astype(np.float64)
    for q in (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99):
        assert abs(stats.quantile(1, 1, q) - np.quantile(v, q)) <= width, q
    assert (stats.quantile(1, 1, 0.0), stats.quantile(1, 1, 1.0)) == (v.min(), v.max())


def test_out_of_range_values_are_counted_and_enter_the_moments_exactly():
    z = np.array([[-50.0, -21.0, 0.1, 20.0, 20.5, 100.0]])
    stats = LogitStatistics(["only"])
    stats.update(z, np.zeros(6, int))
    assert (stats.underflow(0, 0), stats.overflow(0, 0)) == (2, 2)
    assert stats.histogram(0, 0)[1].sum() == 2 and stats.histogram(0, 0)[1][-1] == 1  # 20.0 is in the last bin
    assert stats.mean(0, 0) == pytest.approx(z.mean(), rel=1e-15)
    assert stats.std(0, 0) == pytest.approx(z.std(), rel=1e-14)
    # Quantiles inside the underflow / overflow reach the exact extremes.
    assert (stats.quantile(0, 0, 0.0), stats.quantile(0, 0, 1.0)) == (-50.0, 100.0)
    assert -50.0 < stats.quantile(0, 0, 0.1) < -20.0 and 20.0 < stats.quantile(0, 0, 0.95) < 100.0


def test_logit_shift_hand_computed():
    # spatial (4,): voxels 0, 1 are background, 2, 3 foreground; channel 0 = bg logit, 1 = fg logit.
    names, channels = ["bg", "fg", "edema"], ["bg", "fg"]
    train, unseen = LogitStatistics(names, channels), LogitStatistics(names, channels)
    train.update(np.array([[3.0, 5.0, -4.0, -6.0], [-1.0, -1.0, 4.0, 6.0]]), np.array([0, 0, 1, 1]))
    unseen.update(np.array([[3.0, -1.0, -2.0], [0.0, 1.0, 3.0]]), np.array([0, 1, 1]))
    shift = logit_shift(train, unseen)
    assert shift["bg"]["bg"] == pytest.approx(3.0 - 4.0)
    assert shift["bg"]["fg"] == pytest.approx(0.0 - 1.0)
    assert shift["fg"]["bg"] == pytest.approx(1.5 - 5.0)
    assert shift["fg"]["fg"] == pytest.approx(2.0 - 5.0)
    assert shift["edema"] == {"bg": None, "fg": None}


def test_torch_input_with_batch_dimension_matches_numpy():
    rng = np.random.default_rng(3)
    z, y = random_case(rng, (5, 6, 7), num_classes=2, num_channels=2)
    z = z.astype(np.float16)
    mask = rng.random((5, 6, 7)) < 0.7
    from_numpy, from_torch = LogitStatistics(["bg", "fg"]), LogitStatistics(["bg", "fg"])
    from_numpy.update(z, y, mask)
    from_torch.update(torch.from_numpy(z)[None], torch.from_numpy(y)[None], torch.from_numpy(mask))
    assert from_torch.to_dict() == from_numpy.to_dict()
    assert from_torch.count(1) == np.sum(mask & (y == 1))


def test_json_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(4)
    stats = LogitStatistics(["bg", "fg", "edema"], bin_edges=np.linspace(-10, 10, 41))
    stats.update(*random_case(rng, (6, 7, 8), num_classes=2))  # "edema" stays empty
    path = tmp_path / "stats.json"
    stats.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]  # no temporary file left behind
    record = json.loads(path.read_text())
    assert (record["format"], record["version"]) == ("asymseg-logit-statistics", 1)
    loaded = LogitStatistics.load(path)
    assert loaded.to_dict() == stats.to_dict()
    assert loaded.summary() == stats.summary() and loaded.summary()["edema"] is None
    assert loaded.merge(stats).count(0) == 2 * stats.count(0)  # the edges survived exactly


@pytest.mark.parametrize("corrupt, message", [
    (lambda d: "{not json", "stats.json"),
    (lambda d: json.dumps({**d, "format": "something-else"}), "format"),
    (lambda d: json.dumps({**d, "version": 2}), "version"),
    (lambda d: json.dumps({k: v for k, v in d.items() if k != "m2"}), "'m2'"),
    (lambda d: json.dumps({**d, "underflow": [[d["underflow"][0][0] + 1, 0], [0, 0]]}), "inconsistent"),
    (lambda d: json.dumps({**d, "min": [[None, None], [0.0, 0.0]]}), "'min'"),
])
def test_load_rejects_a_wrong_or_corrupt_file_naming_it(tmp_path, corrupt, message):
    stats = LogitStatistics(["bg", "fg"])
    stats.update(np.array([[1.0, 2.0], [-1.0, -2.0]]), np.array([0, 1]))
    path = tmp_path / "stats.json"
    path.write_text(corrupt(stats.to_dict()))
    with pytest.raises(ValueError, match="stats.json") as info:
        LogitStatistics.load(path)
    assert message in str(info.value)


@pytest.mark.parametrize("logits, labels, mask, argument", [
    (np.zeros((3, 4, 4)), np.zeros((4, 4), int), None, "logits"),  # channel count mismatch
    (np.zeros((2, 4, 4), int), np.zeros((4, 4), int), None, "logits"),  # not floating point
    (np.full((2, 4, 4), np.nan), np.zeros((4, 4), int), None, "logits"),
    (np.zeros((2, 4, 4)), np.full((4, 4), 2), None, "labels"),  # value >= number of classes
    (np.zeros((2, 4, 4)), np.full((4, 4), -1), None, "labels"),
    (np.zeros((2, 4, 4)), np.full((4, 4), 0.5), None, "labels"),
    (np.zeros((2, 4, 4)), np.zeros((4, 5), int), None, "labels"),  # shape mismatch
    (np.zeros((2, 4, 4)), np.zeros((4, 4), int), np.ones((4, 3), bool), "mask"),
    (np.zeros((2, 4, 4)), np.zeros((4, 4), int), np.ones((4, 4)), "mask"),  # float mask
])
def test_bad_update_input_raises_naming_the_argument_and_adds_nothing(logits, labels, mask, argument):
    stats = LogitStatistics(["bg", "fg"])
    with pytest.raises(ValueError, match=rf"^{argument}"):
        stats.update(logits, labels, mask)
    assert stats.count(0) == stats.count(1) == 0


def test_out_of_range_labels_inside_the_mask_only_are_rejected():
    stats = LogitStatistics(["bg", "fg"])
    labels = np.array([0, 1, 255])
    stats.update(np.zeros((2, 3)), labels, labels != 255)  # 255 is masked out: accepted
    assert stats.count(0) == stats.count(1) == 1


def test_bad_arguments_raise_naming_them():
    stats = LogitStatistics(["bg", "fg"])
    with pytest.raises(ValueError, match="^other .*bin edges"):
        stats.merge(LogitStatistics(["bg", "fg"], bin_edges=np.linspace(-20, 20, 81)))
    with pytest.raises(ValueError, match="^other has classes"):
        stats.merge(LogitStatistics(["bg", "tumour"]))
    with pytest.raises(ValueError, match="^unseen has classes"):
        logit_shift(stats, LogitStatistics(["bg", "fg"], ["z0", "z1"]))
    with pytest.raises(ValueError, match="^bin_edges"):
        LogitStatistics(["bg", "fg"], bin_edges=[0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="^class_names"):
        LogitStatistics(["bg", "bg"])
    with pytest.raises(ValueError, match="^q "):
        stats.quantile(0, 0, 1.5)
    with pytest.raises(ValueError, match="^g "):
        stats.mean("tumour", 0)
    with pytest.raises(ValueError, match="^c "):
        stats.std(0, 2)


def test_full_size_volume_stays_within_memory_budget():
    rng = np.random.default_rng(5)
    z = (rng.standard_normal((2, 240, 240, 155), dtype=np.float32) * 5.0)
    y = (rng.random((240, 240, 155), dtype=np.float32) < 0.05).astype(np.uint8)
    stats = LogitStatistics(["bg", "fg"])
    tracemalloc.start()
    try:
        start = time.perf_counter()
        stats.update(z, y)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    print(f"update of a (2, 240, 240, 155) float32 volume: {elapsed:.2f} s, "
          f"peak extra memory {peak / z.nbytes:.2f} x the volume")
    assert stats.count(0) + stats.count(1) == y.size
    assert peak < 3 * z.nbytes


# ---------------------------------------------------------------------------- true-class margins and volumes

# Written by the previous version of logits.py (no margins, no volumes): it must still load.
OLD_RECORD = (
    '{"format": "asymseg-logit-statistics", "version": 1, "class_names": ["bg", "fg"], "channel_names": ["bg", "fg"], '
    '"bin_edges": [-2.0, 0.0, 2.0], "count": [1, 2], "histogram": [[[0, 1], [1, 0]], [[1, 1], [0, 1]]], '
    '"underflow": [[0, 0], [0, 1]], "overflow": [[0, 0], [0, 0]], "mean": [[1.5, -1.0], [0.0, -1.0]], '
    '"m2": [[0.0, 0.0], [0.5, 8.0]], "min": [[1.5, -1.0], [-0.5, -3.0]], "max": [[1.5, -1.0], [0.5, 1.0]]}')


def numpy_margins(cases, g, voxel_ml=None):
    """Margins z_g - max_{k != g} z_k of the class-g voxels (inside the masks), computed independently.

    With ``voxel_ml`` (one per case): also the class volume and the volume with margin < 0.
    """
    margins, volume, missed = [], 0.0, 0.0
    for i, (z, y, mask) in enumerate(cases):
        z = z.astype(np.float64).reshape(z.shape[0], -1)
        y, mask = y.reshape(-1), np.ones(y.size, bool) if mask is None else mask.reshape(-1)
        inside = mask & (y == g)
        true = z[g, inside]
        other = np.delete(z[:, inside], g, axis=0).max(axis=0)
        margins.append(true - other)
        if voxel_ml is not None:
            volume += inside.sum() * voxel_ml[i]
            missed += np.sum(true - other < 0) * voxel_ml[i]
    return np.concatenate(margins), volume, missed


def random_masked_cases(rng, shapes, num_classes=4):
    cases = []
    for shape in shapes:
        z, y = random_case(rng, shape, num_classes, num_classes)
        z[:, rng.random(shape) < 0.1] *= 0.01  # many margins near 0
        cases.append((z, y, rng.random(shape) < 0.8))
    return cases


def test_hand_computed_margins_and_crossing_rate():
    # Voxels: label 0 z=(2, 1, -1): m = 1; label 1 z=(0.5, 0, 0.25): m = -0.5; label 1 z=(-1, 3, 2): m = 1;
    # label 2 z=(1, 1, 1): m = 0, an exact tie, counted on the right side.
    z = np.array([[2.0, 0.5, -1.0, 1.0], [1.0, 0.0, 3.0, 1.0], [-1.0, 0.25, 2.0, 1.0]])
    stats = LogitStatistics(["bg", "fg", "edema"])
    stats.update(z, np.array([0, 1, 1, 2]))
    assert stats.has_margins
    assert [stats.crossing_rate(g) for g in range(3)] == [0.0, 0.5, 0.0]
    assert [stats.margin_mean(g) for g in ("bg", "fg", "edema")] == [1.0, 0.25, 0.0]
    assert (stats.margin_quantile("fg", 0.0), stats.margin_quantile("fg", 1.0)) == (-0.5, 1.0)
    edges, counts = stats.margin_histogram("fg")
    assert np.array_equal(edges, DEFAULT_BIN_EDGES) and counts.sum() == 2  # 0 is already an edge: same bins
    assert counts[np.searchsorted(edges, -0.5)] == 1 and counts[np.searchsorted(edges, 1.0)] == 1
    assert stats.volume_ml(0) is None and stats.missed_volume_ml("fg") is None  # no voxel volume given


def test_margins_match_numpy_across_chunks_cases_and_a_mask(monkeypatch):
    monkeypatch.setattr(logits_module, "_CHUNK", 37)  # chunk boundaries inside every case
    rng = np.random.default_rng(10)
    cases = random_masked_cases(rng, [(7, 11, 5), (13, 4, 9), (6, 6, 6)])
    voxel_ml = [0.001, 0.008, 0.0035]
    stats = LogitStatistics(["bg", "a", "b", "c"])
    for (z, y, mask), ml in zip(cases, voxel_ml):
        stats.update(z, y, mask, voxel_volume_ml=ml)
    out_of_range = 0
    for g in range(4):
        m, volume, missed = numpy_margins(cases, g, voxel_ml)
        assert stats.count(g) == m.size > 0
        edges, counts = stats.margin_histogram(g)
        assert np.array_equal(counts, np.histogram(m, edges)[0])
        out_of_range += m.size - counts.sum()
        assert stats.crossing_rate(g) == np.sum(m < 0) / m.size  # exact
        assert 0 < stats.crossing_rate(g) < 1
        assert stats.margin_mean(g) == pytest.approx(m.mean(), rel=1e-9, abs=1e-12)
        assert (stats.margin_quantile(g, 0.0), stats.margin_quantile(g, 1.0)) == (m.min(), m.max())
        assert abs(stats.margin_quantile(g, 0.5) - np.median(m)) <= 0.25 + 1e-12  # one bin width
        assert stats.volume_ml(g) == pytest.approx(volume, rel=1e-12)
        assert stats.missed_volume_ml(g) == pytest.approx(missed, rel=1e-12)
    assert out_of_range > 0  # margins beyond the edges are still counted, and crossings among them


def test_crossing_rate_is_exact_when_the_bin_edges_lack_zero():
    rng = np.random.default_rng(11)
    z, y = random_case(rng, (20, 20, 10), num_classes=3, num_channels=3)
    stats = LogitStatistics(["bg", "a", "b"], bin_edges=np.linspace(-9.7, 10.3, 9))  # 0 is not an edge
    stats.update(z, y)
    edges = stats.margin_histogram(0)[0]
    assert 0.0 in edges and set(stats.bin_edges) < set(edges)  # the logits' edges with 0 added
    for g in range(3):
        m, _, _ = numpy_margins([(z, y, None)], g)
        assert stats.crossing_rate(g) == np.sum(m < 0) / m.size
        assert np.array_equal(stats.margin_histogram(g)[1], np.histogram(m, edges)[0])
    negative = LogitStatistics(["bg", "a"], bin_edges=[-3.0, -1.0, 0.0])  # 0 as the last edge: closed bin
    negative.update(np.array([[0.0, 1.0], [0.0, 0.0]]), np.array([0, 1]))  # margins 0 (a tie) and -1
    assert (negative.crossing_rate(0), negative.crossing_rate(1)) == (0.0, 1.0)


def test_merge_of_margins_and_volumes_equals_one_update_of_the_concatenation():
    rng = np.random.default_rng(12)
    cases = random_masked_cases(rng, [(9, 8, 7), (5, 6, 7), (4, 4, 4)], num_classes=3)
    parts = []
    for z, y, mask in cases:
        part = LogitStatistics(["bg", "a", "b"])
        part.update(z, y, mask, voxel_volume_ml=0.002)
        parts.append(part)
    merged = parts[0].merge(parts[1]).merge(parts[2])
    whole = LogitStatistics(["bg", "a", "b"])
    whole.update(np.concatenate([z.reshape(3, -1) for z, _, _ in cases], axis=1),
                 np.concatenate([y.reshape(-1) for _, y, _ in cases]),
                 np.concatenate([mask.reshape(-1) for _, _, mask in cases]), voxel_volume_ml=0.002)
    got, expected = merged.to_dict(), whole.to_dict()
    for key in ("count", "histogram", "underflow", "overflow", "min", "max"):
        assert got["margins"][key] == expected["margins"][key], key
    for key in ("mean", "m2"):
        np.testing.assert_allclose(got["margins"][key], expected["margins"][key], rtol=1e-12)
    for key in ("volume_ml", "missed_volume_ml"):
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-12)
    assert [merged.crossing_rate(g) for g in range(3)] == [whole.crossing_rate(g) for g in range(3)]


def test_volume_is_none_once_a_case_lacked_the_voxel_volume():
    z, y = np.array([[1.0, -1.0, 0.0], [0.0, 1.0, 2.0]]), np.array([0, 1, 1])
    stats = LogitStatistics(["bg", "fg"])
    assert stats.volume_ml("fg") == 0.0 and stats.missed_volume_ml("fg") == 0.0  # nothing yet: known, empty
    stats.update(z, y, voxel_volume_ml=0.5)
    assert (stats.volume_ml("bg"), stats.volume_ml("fg"), stats.missed_volume_ml("fg")) == (0.5, 1.0, 0.0)
    stats.update(-z, y, voxel_volume_ml=np.float32(0.25))  # fg margins now -2 and -2: both missed
    assert (stats.volume_ml("fg"), stats.missed_volume_ml("fg")) == (1.5, 0.5)
    unknown = LogitStatistics(["bg", "fg"])
    unknown.update(z, y)
    assert stats.merge(unknown).volume_ml("fg") is None and stats.missed_volume_ml("fg") is None
    stats.update(z, y, voxel_volume_ml=1.0)  # unknown stays unknown
    assert stats.volume_ml(0) is None and stats.to_dict()["volume_ml"] is None
    assert stats.crossing_rate("fg") == 2 / 8  # the margins themselves are unaffected


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True, "0.001", [0.001]])
def test_bad_voxel_volume_raises_and_adds_nothing(bad):
    stats = LogitStatistics(["bg", "fg"])
    with pytest.raises(ValueError, match="^voxel_volume_ml must be a positive number"):
        stats.update(np.zeros((2, 3)), np.array([0, 1, 1]), voxel_volume_ml=bad)
    assert stats.count(0) == 0 and stats.volume_ml(0) == 0.0


def test_margins_and_volumes_round_trip_through_json(tmp_path):
    rng = np.random.default_rng(13)
    stats = LogitStatistics(["bg", "fg", "edema"], bin_edges=np.linspace(-9.5, 10.5, 41), metadata={"case": "x"})
    z, y, mask = random_masked_cases(rng, [(6, 7, 8)], num_classes=3)[0]
    y[y == 2] = 1  # "edema" stays empty
    stats.update(z, y, mask, voxel_volume_ml=0.001)
    record = stats.to_dict()
    assert record["margins"]["channel_names"] == ["margin"] and 0.0 in record["margins"]["bin_edges"]
    assert len(record["volume_ml"]) == len(record["missed_volume_ml"]) == 3
    path = tmp_path / "stats.json"
    stats.save(path)
    loaded = LogitStatistics.load(path)
    assert loaded.to_dict() == record == LogitStatistics.from_dict(json.loads(json.dumps(record))).to_dict()
    assert loaded.has_margins and loaded.crossing_rate("fg") == stats.crossing_rate("fg")
    assert loaded.crossing_rate("edema") is None and loaded.margin_mean("edema") is None
    assert loaded.volume_ml("fg") == stats.volume_ml("fg") and loaded.missed_volume_ml("edema") == 0.0
    assert loaded.merge(stats).crossing_rate("fg") == stats.crossing_rate("fg")


def test_a_file_written_before_margins_still_loads_and_merges(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(OLD_RECORD)
    old = LogitStatistics.load(path)
    assert old.count("fg") == 2 and old.mean("fg", "fg") == -1.0  # the histograms are intact
    assert not old.has_margins
    assert (old.margin_histogram("fg"), old.margin_mean("fg"), old.margin_quantile("fg", 0.5),
            old.crossing_rate("fg")) == (None, None, None, None)
    assert old.volume_ml("fg") is None and old.missed_volume_ml("fg") is None
    assert "margins" not in old.to_dict() and old.to_dict()["volume_ml"] is None
    new = LogitStatistics(["bg", "fg"], bin_edges=[-2.0, 0.0, 2.0])
    new.update(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1]), voxel_volume_ml=0.001)
    assert new.has_margins and new.merge(old).count("fg") == 3
    assert not new.has_margins and new.crossing_rate("fg") is None and new.volume_ml("fg") is None
    assert margin_shift(old, old)["fg"] == {"train_crossing": None, "unseen_crossing": None,
                                            "train_mean": None, "unseen_mean": None}


def test_no_margins_when_the_channels_are_not_the_classes():
    stats = tiny_stats()  # classes bg, fg, edema; channels bg, fg
    assert not stats.has_margins and stats.crossing_rate("fg") is None and stats.margin_histogram(0) is None
    assert "margins" not in stats.to_dict()
    single = LogitStatistics(["only"])  # one class: no other logit to compare with
    single.update(np.zeros((1, 3)), np.zeros(3, int), voxel_volume_ml=0.5)
    assert not single.has_margins and single.volume_ml(0) == 1.5 and single.missed_volume_ml(0) is None
    with pytest.raises(ValueError, match="margins are defined only when the channels are the classes"):
        LogitStatistics.from_dict({**stats.to_dict(), "margins": LogitStatistics(["bg", "fg"]).to_dict()["margins"]})


def test_margin_shift_hand_computed():
    names = ["bg", "fg", "edema"]
    train, unseen = LogitStatistics(names), LogitStatistics(names)
    # fg margins: train 3, 1 (none crossing); unseen 1, -2, -1 (two of three crossing).
    train.update(np.array([[4.0, -2.0, -1.0], [-1.0, 1.0, 0.0], [-3.0, -2.0, -5.0]]), np.array([0, 1, 1]))
    unseen.update(np.array([[4.0, 0.0, 1.0, 0.5], [-1.0, 1.0, -1.0, -0.5], [-3.0, -2.0, 0.0, 0.0]]),
                  np.array([0, 1, 1, 1]))
    shift = margin_shift(train, unseen)
    assert shift["fg"]["train_crossing"] == 0.0 and shift["fg"]["unseen_crossing"] == 2 / 3
    assert shift["fg"]["train_mean"] == pytest.approx(2.0) and shift["fg"]["unseen_mean"] == pytest.approx(-2 / 3)
    assert shift["bg"] == {"train_crossing": 0.0, "unseen_crossing": 0.0, "train_mean": 5.0, "unseen_mean": 5.0}
    assert shift["edema"] == dict.fromkeys(["train_crossing", "unseen_crossing", "train_mean", "unseen_mean"])
    with pytest.raises(ValueError, match="^unseen has classes"):
        margin_shift(train, LogitStatistics(["bg", "fg"]))
    with pytest.raises(ValueError, match="^train must be"):
        margin_shift({}, unseen)


@pytest.mark.parametrize("corrupt, message", [
    (lambda d: {**d, "margins": {**d["margins"], "count": [5, 5]}}, "field 'margins'"),
    (lambda d: {**d, "margins": {**d["margins"], "bin_edges": [-1.0, 1.0]}}, "field 'margins'"),
    (lambda d: {**d, "margins": {**d["margins"], "format": "x"}}, "field 'margins': not a logit-statistics"),
    (lambda d: {**d, "volume_ml": [-1.0, 1.0]}, "'volume_ml'"),
    (lambda d: {**d, "volume_ml": [1.0]}, "'volume_ml'"),
    (lambda d: {**d, "missed_volume_ml": [0.0, 5.0]}, "may not exceed"),
    (lambda d: {**d, "volume_ml": None}, "needs margins and volume_ml"),
    (lambda d: {k: v for k, v in d.items() if k != "margins"}, "needs margins"),
])
def test_corrupt_margins_or_volumes_are_rejected(corrupt, message):
    stats = LogitStatistics(["bg", "fg"])
    stats.update(np.array([[1.0, 2.0], [-1.0, -2.0]]), np.array([0, 1]), voxel_volume_ml=1.0)
    with pytest.raises(ValueError, match=message):
        LogitStatistics.from_dict(corrupt(stats.to_dict()))
